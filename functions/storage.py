"""Object storage: the store protocol, the local store, and block hashing.

A store is addressed by a URI: ``s3://bucket/prefix``, ``file:///abs/path`` or a plain local path.
Keys are relative, ``/``-separated strings (``indexes/<id>/manifest.json``). Both backends offer
the same conditional write, which is what makes channel pointers compare-and-swap:

- S3 (AWS, MinIO, moto): ``PutObject`` with ``IfMatch=<etag>`` or ``IfNoneMatch="*"``; a 412 or
  409 answer is a lost race.
- Local: the same check under an exclusive ``flock`` on the store's lock file, then an atomic
  rename; the ETag of a local object is the sha256 of its bytes.

``fetch`` makes an object available as a local file and hashes it in fixed-size blocks as the
bytes arrive, so integrity is checked without a second pass and blocks can arrive in parallel
(ranged GETs on S3); a local store returns its own file, its blocks hashed in parallel in place.
The S3 backend lives in ``s3`` (the only module that touches boto3).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from .errors import (
    ConfigurationError,
    IntegrityError,
    ObjectNotFound,
    StoreError,
    WriteConflict,
)

__all__ = [
    "Fetched",
    "LocalStore",
    "ObjectInfo",
    "Store",
    "Versioned",
    "block_hashes",
    "open_store",
]

_HASH_THREADS = max(2, os.cpu_count() or 2)


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing."""

    key: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Versioned:
    """An object's bytes with the version token (ETag) a conditional write compares against."""

    data: bytes
    etag: str


@dataclass(frozen=True)
class Fetched:
    """A local copy of an object: its size and the sha256 of each block, as actually read."""

    path: Path
    size: int
    blocks: list[str]


class Store(Protocol):
    """What the builder and the function need from an object store."""

    uri: str

    def get(self, key: str) -> Versioned:
        """Read a small object with its ETag; ``ObjectNotFound`` if absent."""

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write a small object, conditionally; returns the new ETag or raises ``WriteConflict``."""

    def upload(self, key: str, path: Path) -> None:
        """Upload a local file (of any size) to ``key``."""

    def fetch(self, key: str, dest: Path, *, size: int, block_size: int) -> Fetched:
        """Make ``key`` (expected to be ``size`` bytes) a local file, hashed per block."""

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object; ``IntegrityError`` if it is shorter than ``end``."""

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """List the objects whose key starts with ``prefix``."""

    def check(self, *, write: bool = False) -> None:
        """Raise ``StoreError`` unless the store exists and can be read (and written)."""

    def abort_incomplete(
        self, prefix: str, before: datetime, *, dry_run: bool = False
    ) -> list[str]:
        """Discard uploads under ``prefix`` begun before ``before`` and never completed."""

    def delete(self, keys: list[str]) -> None:
        """Delete objects; absent keys are ignored."""


def open_store(uri: str, **s3_options: Any) -> Store:
    """Open the store a URI names: ``s3://bucket/prefix``, ``file:///path`` or a local path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigurationError(f"store URI {uri!r} names no bucket")
        from .s3 import S3Store

        return S3Store(parsed.netloc, parsed.path.strip("/"), **s3_options)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "":
        return LocalStore(Path(uri))
    raise ConfigurationError(f"store URI {uri!r}: scheme must be s3, file or none")


def block_hashes(path: Path, block_size: int) -> list[str]:
    """The sha256 of each ``block_size`` block of a file, hashed in parallel threads."""
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:

        def digest(offset: int) -> str:
            return hashlib.sha256(os.pread(fd, block_size, offset)).hexdigest()

        with ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="hash") as pool:
            return list(pool.map(digest, range(0, size, block_size)))
    finally:
        os.close(fd)


class LocalStore:
    """A store in a local folder (also a shared volume); conditional writes under ``flock``."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = self.root.as_uri()

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root):
            raise ConfigurationError(f"key {key!r} leaves the store")
        return path

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, key: str) -> Versioned:
        """Read a small object with its ETag (the sha256 of its bytes)."""
        try:
            data = self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}/{key} does not exist") from exc
        return Versioned(data, hashlib.sha256(data).hexdigest())

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write atomically; with a condition, check it and rename under the store lock."""
        path = self._path(key)
        if if_match is None and not if_none_match:
            self._write_atomic(path, data)
            return hashlib.sha256(data).hexdigest()
        with self._locked():
            try:
                current: str | None = hashlib.sha256(path.read_bytes()).hexdigest()
            except FileNotFoundError:
                current = None
            if if_none_match and current is not None:
                raise WriteConflict(f"{self.uri}/{key} already exists")
            if if_match is not None and current != if_match:
                raise WriteConflict(f"{self.uri}/{key} changed since it was read")
            self._write_atomic(path, data)
        return hashlib.sha256(data).hexdigest()

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers may run as another user
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload(self, key: str, path: Path) -> None:
        """Copy a file into the store; it appears under its key only when complete."""
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def fetch(self, key: str, dest: Path, *, size: int, block_size: int) -> Fetched:
        """Hash the store's own file and hand it out in place: no copy for a local store."""
        path = self._path(key)
        try:
            return Fetched(path, path.stat().st_size, block_hashes(path, block_size))
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}/{key} does not exist") from exc

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of a file, read where they lie."""
        if end <= start:
            return b""
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}/{key} does not exist") from exc
        try:
            data = os.pread(fd, end - start, start)
        finally:
            os.close(fd)
        if len(data) != end - start:
            raise IntegrityError(f"{key} is shorter than {end} bytes")
        return data

    def check(self, *, write: bool = False) -> None:
        """The folder exists and is readable; to write, it is created if absent and writable."""
        try:
            if write:
                self.root.mkdir(parents=True, exist_ok=True)
                fd, probe = tempfile.mkstemp(dir=self.root, prefix=".tmp-preflight-")
                os.close(fd)
                os.unlink(probe)
            elif not self.root.is_dir():
                raise StoreError(f"store folder {self.root} does not exist", transient=False)
            else:
                os.listdir(self.root)
        except OSError as exc:
            raise StoreError(
                f"store folder {self.root} cannot be {'written' if write else 'read'}: "
                f"{exc.strerror}",
                transient=False,
            ) from exc

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """List files under the prefix, skipping in-progress temporary files."""
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if not base.is_dir():
            return []
        found = []
        for path in sorted(base.rglob("*")):
            key = path.relative_to(self.root).as_posix()
            if (
                path.is_file()
                and key.startswith(prefix)
                and not path.name.startswith((".tmp-", ".lock"))
            ):
                stat = path.stat()
                found.append(
                    ObjectInfo(key, stat.st_size, datetime.fromtimestamp(stat.st_mtime, UTC))
                )
        return found

    def abort_incomplete(
        self, prefix: str, before: datetime, *, dry_run: bool = False
    ) -> list[str]:
        """Remove temporary files a killed writer left under the prefix, older than ``before``."""
        base = self._path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        removed = []
        for path in sorted(base.rglob(".tmp-*")) if base.is_dir() else []:
            key = path.relative_to(self.root).as_posix()
            stat = path.stat()
            if key.startswith(prefix) and datetime.fromtimestamp(stat.st_mtime, UTC) < before:
                if not dry_run:
                    self.delete([key])
                removed.append(key)
        return removed

    def delete(self, keys: list[str]) -> None:
        """Delete files and prune the folders they leave empty."""
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == self.root or any(parent.iterdir()):
                    break
                parent.rmdir()
