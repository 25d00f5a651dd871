"""Object storage: the only module that touches boto3 or the store's file system layout.

A store is addressed by a URI: ``s3://bucket/prefix``, ``file:///abs/path`` or a plain local path.
Keys are relative, ``/``-separated strings (``indexes/<id>/manifest.json``). Both backends offer
the same conditional write, which is what makes channel pointers compare-and-swap:

- S3 (AWS, MinIO, moto): ``PutObject`` with ``IfMatch=<etag>`` or ``IfNoneMatch="*"``; a 412 or
  409 answer is a lost race.
- Local: the same check under an exclusive ``flock`` on the store's lock file, then an atomic
  rename; the ETag of a local object is the sha256 of its bytes.

``fetch`` streams an object to a local path while hashing it, so integrity is checked without a
second pass over the bytes; a local store returns its own file (hashed in place, no copy).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlparse

from .errors import ConfigurationError, ObjectNotFound, StoreError, WriteConflict

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

__all__ = ["Fetched", "LocalStore", "ObjectInfo", "S3Store", "Store", "Versioned", "open_store"]

_CHUNK = 8 * 1024 * 1024


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
    """A local copy of an object, with the sha256 and size of the bytes actually read."""

    path: Path
    sha256: str
    size: int


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

    def fetch(self, key: str, dest: Path) -> Fetched:
        """Make ``key`` available as a local file (written to ``dest`` if it must be copied)."""

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """List the objects whose key starts with ``prefix``."""

    def delete(self, keys: list[str]) -> None:
        """Delete objects; absent keys are ignored."""


def open_store(uri: str, **s3_options: Any) -> Store:
    """Open the store a URI names: ``s3://bucket/prefix``, ``file:///path`` or a local path."""
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise ConfigurationError(f"store URI {uri!r} names no bucket")
        return S3Store(parsed.netloc, parsed.path.strip("/"), **s3_options)
    if parsed.scheme == "file":
        return LocalStore(Path(parsed.path))
    if parsed.scheme == "":
        return LocalStore(Path(uri))
    raise ConfigurationError(f"store URI {uri!r}: scheme must be s3, file or none")


def _sha256_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


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

    def fetch(self, key: str, dest: Path) -> Fetched:
        """Hash the store's own file and hand it out in place: no copy for a local store."""
        path = self._path(key)
        try:
            sha256, size = _sha256_file(path)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"{self.uri}/{key} does not exist") from exc
        return Fetched(path, sha256, size)

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

    def delete(self, keys: list[str]) -> None:
        """Delete files and prune the folders they leave empty."""
        for key in keys:
            path = self._path(key)
            path.unlink(missing_ok=True)
            for parent in path.parents:
                if parent == self.root or any(parent.iterdir()):
                    break
                parent.rmdir()


class S3Store:
    """A store under an S3 prefix (AWS S3, MinIO or any S3-compatible server), through boto3."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        multipart_threshold: int = 64 * 1024 * 1024,
        max_concurrency: int = 8,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        # botocore's default is 'legacy' retries with 60 s timeouts: fail faster, retry smarter.
        config = Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max(10, max_concurrency),
        )
        self.client: S3Client = client or boto3.client("s3", config=config)
        self._transfer = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=multipart_threshold,
            max_concurrency=max_concurrency,
        )

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "")
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            where = f"{self.uri}/{key}"
            if code in ("NoSuchKey", "404", "NotFound") or status == 404:
                raise ObjectNotFound(f"{where} does not exist") from exc
            if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
                raise WriteConflict(
                    f"{where}: conditional write refused ({code or status})"
                ) from exc
            raise StoreError(f"{where}: {code or status}: {error.get('Message', '')}") from exc
        except BotoCoreError as exc:
            raise StoreError(f"{self.uri}/{key}: {type(exc).__name__}: {exc}") from exc

    def get(self, key: str) -> Versioned:
        """Read a small object with its ETag."""
        with self._translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Versioned(response["Body"].read(), response["ETag"])

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """PutObject with S3's conditional-write headers."""
        conditions: dict[str, str] = {}
        if if_match is not None:
            conditions["IfMatch"] = if_match
        if if_none_match:
            conditions["IfNoneMatch"] = "*"
        with self._translated(key):
            response = self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(key),
                Body=data,
                **conditions,  # type: ignore[arg-type]
            )
        return response["ETag"]

    def upload(self, key: str, path: Path) -> None:
        """Upload a file; large files go up as parallel multipart parts."""
        with self._translated(key):
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)

    def fetch(self, key: str, dest: Path) -> Fetched:
        """Stream one GET to ``dest``, hashing as it goes; the file appears only when complete."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        digest = hashlib.sha256()
        size = 0
        try:
            with self._translated(key), tmp.open("wb") as handle:
                body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
                for chunk in body.iter_chunks(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
                    size += len(chunk)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return Fetched(dest, digest.hexdigest(), size)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """List objects under the prefix (all pages)."""
        strip = len(self._key(""))
        found = []
        with self._translated(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(item["Key"][strip:], item["Size"], item["LastModified"])
                    )
        return found

    def delete(self, keys: list[str]) -> None:
        """Delete objects in batches of 1000."""
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": self._key(key)} for key in keys[start : start + 1000]
            ]
            with self._translated(keys[start]):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
