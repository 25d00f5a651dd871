"""The store's layout: where indexes and channels live, and how a name becomes a verified index.

    indexes/<index_id>/<file>    immutable artifact files (``artifact`` owns their format)
    indexes/<index_id>/manifest.json   written last, with If-None-Match: its presence publishes
    channels/<name>.json         {index_id, manifest_sha256, published_at}, moved only by CAS

A reader that follows a channel checks that the manifest it fetched hashes to the pointer's
``manifest_sha256``; every data file is checked against the manifest before use.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ValidationError

from . import ivf
from .artifact import DATA_FILES, MANIFEST, Artifact, Manifest, parse_manifest, verify_file
from .errors import ConfigurationError, IntegrityError, ObjectNotFound
from .storage import Store

__all__ = [
    "Pointer",
    "channel_key",
    "fetch_artifact",
    "fetch_file",
    "index_key",
    "is_index_id",
    "move_channel",
    "read_channel",
    "read_manifest",
    "read_pointer",
]

_INDEX_ID = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{8}$")
_FETCH_THREADS = 4
_CHANNEL = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,62})$")


class Pointer(BaseModel):
    """A channel's content: which index it names, and the sha256 of that index's manifest."""

    index_id: str
    manifest_sha256: str
    published_at: datetime


def is_index_id(name: str) -> bool:
    """Index ids look like ``20261127-081500-3f2a9c1d``; anything else names a channel."""
    return bool(_INDEX_ID.match(name))


def index_key(index_id: str, name: str = MANIFEST) -> str:
    """The key of one file of an index."""
    if not is_index_id(index_id):
        raise ConfigurationError(f"{index_id!r} is not an index id")
    return f"indexes/{index_id}/{name}"


def channel_key(name: str) -> str:
    """The key of a channel pointer."""
    if not _CHANNEL.match(name):
        raise ConfigurationError(f"{name!r} is not a valid channel name (lowercase, digits, . _ -)")
    return f"channels/{name}.json"


def read_channel(store: Store, name: str) -> tuple[Pointer, str]:
    """The pointer and its ETag; ``ObjectNotFound`` if the channel was never published."""
    versioned = store.get(channel_key(name))
    try:
        return Pointer.model_validate_json(versioned.data), versioned.etag
    except ValidationError as exc:
        raise IntegrityError(f"channel {name!r} holds an invalid pointer") from exc


def read_pointer(store: Store, name: str) -> Pointer:
    """A channel's pointer; ``ObjectNotFound`` that says so if nothing was published to it."""
    try:
        pointer, _ = read_channel(store, name)
    except ObjectNotFound as exc:
        raise ObjectNotFound(
            exc.message, public=f"channel {name!r} does not exist (nothing published to it)"
        ) from exc
    return pointer


def move_channel(store: Store, name: str, pointer: Pointer, *, expected_etag: str | None) -> str:
    """Compare-and-swap: write the pointer only if the channel is still at ``expected_etag``.

    ``None`` means the channel must not exist yet. Raises ``WriteConflict`` when it moved.
    """
    data = pointer.model_dump_json().encode()
    if expected_etag is None:
        return store.put(channel_key(name), data, if_none_match=True)
    return store.put(channel_key(name), data, if_match=expected_etag)


def read_manifest(store: Store, name: str, *, pointer: Pointer | None = None) -> Manifest:
    """Resolve a channel name or an index id to its manifest, checked against the pointer.

    ``pointer``: the channel's, read already (it is not read again).
    """
    if is_index_id(name):
        manifest = parse_manifest(_get(store, index_key(name), f"index {name} does not exist"))
        expected = name
    else:
        if pointer is None:
            pointer = read_pointer(store, name)
        data = _get(store, index_key(pointer.index_id), f"index {pointer.index_id} does not exist")
        if hashlib.sha256(data).hexdigest() != pointer.manifest_sha256:
            raise IntegrityError(f"manifest of {pointer.index_id} does not match channel {name!r}")
        manifest = parse_manifest(data)
        expected = pointer.index_id
    if manifest.index_id != expected:
        raise IntegrityError(f"manifest under {expected} names index {manifest.index_id}")
    return manifest


def _get(store: Store, key: str, public: str) -> bytes:
    try:
        return store.get(key).data
    except ObjectNotFound as exc:
        raise ObjectNotFound(exc.message, public=public) from exc


def fetch_file(store: Store, manifest: Manifest, name: str, dest: Path) -> Path:
    """One data file of an index, downloaded into ``dest`` (or used in place) and verified."""
    entry = manifest.files[name]
    key = index_key(manifest.index_id, name)
    try:
        fetched = store.fetch(key, dest / name, size=entry.size, block_size=entry.block_size)
    except ObjectNotFound as exc:
        raise IntegrityError(f"{manifest.index_id}: {name} is missing from the store") from exc
    verify_file(name, entry, fetched.size, fetched.blocks)
    return fetched.path


def fetch_artifact(
    store: Store, manifest: Manifest, cache_dir: Path, *, populate: bool = False
) -> Artifact:
    """Download (or open in place) every data file, verify it, and map the artifact
    (``populate``: its vectors' pages at once, ``Artifact``).

    Nothing is returned unless every file matches its manifest entry; a failed fetch leaves no
    partial folder behind.
    """
    dest = cache_dir / manifest.index_id

    def fetch(name: str) -> Path:
        return fetch_file(store, manifest, name, dest)

    try:
        # Files download and hash in parallel: hashlib and socket reads release the GIL.
        with ThreadPoolExecutor(max_workers=_FETCH_THREADS, thread_name_prefix="fetch") as pool:
            names = DATA_FILES + ((ivf.HEAD,) if ivf.HEAD in manifest.files else ())
            paths = dict(zip(names, pool.map(fetch, names), strict=True))
        return Artifact(manifest, paths, populate=populate)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
