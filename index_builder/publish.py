"""Publishing indexes and moving channels: upload, compare-and-swap, list, promote, gc.

Publishing is two steps that each either happen whole or not at all: the data files go up, then
the manifest with If-None-Match (an index exists once its manifest does); then the channel
pointer moves by compare-and-swap against the version read before the build started, so a
concurrent publisher is never overwritten silently — the loser gets ``WriteConflict``.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from functions.artifact import DATA_FILES, MANIFEST, Manifest, parse_manifest
from functions.catalog import (
    Pointer,
    channel_key,
    index_key,
    is_index_id,
    move_channel,
    read_channel,
    read_manifest,
)
from functions.errors import ObjectNotFound, WriteConflict
from functions.storage import Store

from .progress import Progress

__all__ = [
    "Collected",
    "IndexInfo",
    "catalog",
    "collect_garbage",
    "missing_channel",
    "promote",
    "publish",
    "upload_index",
]


@dataclass(frozen=True)
class IndexInfo:
    """One index folder in the store."""

    index_id: str
    size: int
    modified: datetime
    complete: bool


@dataclass(frozen=True)
class Collected:
    """What gc deleted (or would delete): index ids, and dead uploads' keys."""

    indexes: list[str]
    uploads: list[str]


def upload_index(
    store: Store, directory: Path, manifest: Manifest, progress: Progress | None = None
) -> bytes:
    """Upload data files, then the manifest (create-only); returns the manifest the store holds.

    Ids hash the content, so an index id already in the store with the same files is this very
    index (built again in the same second): it is kept, not uploaded again.
    """
    progress = progress or Progress(bars=False)
    data = (directory / MANIFEST).read_bytes()
    total = sum(entry.size for entry in manifest.files.values()) + len(data)
    with progress.phase("uploading", total, "B") as phase:
        existing = _published(store, manifest)
        if existing is not None:
            phase.notes.append("already published")
            return existing
        for name in DATA_FILES:
            store.upload(index_key(manifest.index_id, name), directory / name)
            phase.update(manifest.files[name].size)
        try:
            store.put(index_key(manifest.index_id), data, if_none_match=True)
        except WriteConflict:  # the same index, published by a concurrent build of it
            existing = _published(store, manifest)
            if existing is None:
                raise
            data = existing
        phase.update(len(data))
        phase.notes.append(f"{len(DATA_FILES) + 1} files")
    return data


def _published(store: Store, manifest: Manifest) -> bytes | None:
    """The stored manifest of ``manifest.index_id`` if it holds the same files, else None."""
    try:
        data = store.get(index_key(manifest.index_id)).data
    except ObjectNotFound:
        return None
    stored = parse_manifest(data)
    if (stored.embedding, stored.files) != (manifest.embedding, manifest.files):
        raise WriteConflict(f"index {manifest.index_id} exists with other content")
    return data


def publish(
    store: Store,
    directory: Path,
    manifest: Manifest,
    *,
    channel: str | None,
    expected_etag: str | None,
    progress: Progress | None = None,
) -> Manifest:
    """Upload an index and, if asked, move ``channel`` to it by compare-and-swap; returns the
    manifest as published (an identical index already in the store keeps its own)."""
    data = upload_index(store, directory, manifest, progress)
    if channel is not None:
        pointer = Pointer(
            index_id=manifest.index_id,
            manifest_sha256=hashlib.sha256(data).hexdigest(),
            published_at=datetime.now(UTC),
        )
        move_channel(store, channel, pointer, expected_etag=expected_etag)
    return parse_manifest(data)


def promote(
    store: Store,
    channel: str,
    index_id: str,
    *,
    expected_index: str | None = None,
    create_channel: bool = False,
) -> Pointer:
    """Point ``channel`` at an existing, valid index (compare-and-swap on the current pointer).

    A channel that does not exist yet is created only with ``create_channel``: a typo in a
    channel's name must not quietly start a channel nothing follows.
    """
    channel_key(channel)  # refuse a bad name before touching the store
    index_key(index_id)  # an index id, not a channel name (read_manifest would take either)
    read_manifest(store, index_id)  # refuses a missing, incomplete or unreadable index
    data = store.get(index_key(index_id)).data
    try:
        current, etag = read_channel(store, channel)
    except ObjectNotFound:
        if expected_index is not None:
            raise WriteConflict(
                f"channel {channel!r} does not exist, so it does not point at {expected_index}"
            ) from None
        if not create_channel:
            raise missing_channel(store, channel) from None
        expected: str | None = None
    else:
        if expected_index is not None and current.index_id != expected_index:
            raise WriteConflict(
                f"channel {channel!r} points at {current.index_id}, not {expected_index}"
            )
        expected = etag
    pointer = Pointer(
        index_id=index_id,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        published_at=datetime.now(UTC),
    )
    move_channel(store, channel, pointer, expected_etag=expected)
    return pointer


def missing_channel(store: Store, name: str) -> ObjectNotFound:
    """The error for a channel that does not exist and may not be created: which ones do."""
    names = sorted(_channel_names(store))
    close = difflib.get_close_matches(name, names, n=1)
    guess = f"did you mean {close[0]!r}? " if close else ""
    return ObjectNotFound(
        f"channel {name!r} does not exist ({guess}channels: {', '.join(names) or 'none yet'}); "
        "to create it, pass --create-channel"
    )


def _channel_names(store: Store) -> list[str]:
    names = []
    for item in store.list_objects("channels/"):
        name = item.key.removeprefix("channels/").removesuffix(".json")
        if item.key.endswith(".json") and "/" not in name:
            names.append(name)
    return names


def catalog(store: Store) -> tuple[list[IndexInfo], dict[str, Pointer]]:
    """Every index folder (newest first) and every channel with its pointer."""
    folders: dict[str, list[tuple[str, int, datetime]]] = {}
    for item in store.list_objects("indexes/"):
        parts = item.key.split("/")
        if len(parts) == 3 and is_index_id(parts[1]):
            folders.setdefault(parts[1], []).append((parts[2], item.size, item.modified))
    indexes = [
        IndexInfo(
            index_id,
            sum(size for _, size, _ in files),
            max(modified for _, _, modified in files),
            any(name == MANIFEST for name, _, _ in files),
        )
        for index_id, files in folders.items()
    ]
    indexes.sort(key=lambda info: info.index_id, reverse=True)
    channels = {name: read_channel(store, name)[0] for name in _channel_names(store)}
    return indexes, channels


def collect_garbage(
    store: Store,
    keep: int,
    *,
    incomplete_after: timedelta = timedelta(hours=6),
    dry_run: bool = False,
) -> Collected:
    """Delete all but the ``keep`` newest complete indexes, never one a channel points to.

    What a build that died mid-upload left is deleted once older than ``incomplete_after``, so
    a build uploading right now is left alone: index folders without a manifest, and uploads
    never completed (S3 multipart uploads, a local store's temporary files).
    """
    indexes, channels = catalog(store)
    pinned = {pointer.index_id for pointer in channels.values()}
    now = datetime.now(UTC)
    uploads = store.abort_incomplete("indexes/", now - incomplete_after, dry_run=dry_run)
    complete = [info for info in indexes if info.complete]
    doomed = [info.index_id for info in complete[keep:] if info.index_id not in pinned]
    doomed += [
        info.index_id
        for info in indexes
        if not info.complete and now - info.modified > incomplete_after
    ]
    if dry_run:
        return Collected(doomed, uploads)
    deleted = []
    for index_id in doomed:
        # A channel may have moved since the listing: look again right before deleting.
        if index_id in {pointer.index_id for pointer in catalog(store)[1].values()}:
            continue
        # The manifest goes first, so a half-deleted index is never mistaken for a complete one.
        store.delete([index_key(index_id)])
        store.delete([item.key for item in store.list_objects(f"indexes/{index_id}/")])
        deleted.append(index_id)
    return Collected(deleted, uploads)
