"""Publishing indexes and moving channels: upload, compare-and-swap, list, promote, load, gc.

Publishing is two steps that each either happen whole or not at all: the data files go up, then
the manifest with If-None-Match (an index exists once its manifest does); then the channel
pointer moves by compare-and-swap against the version read before the build started, so a
concurrent publisher is never overwritten silently — the loser gets ``WriteConflict``.

With a ``Mirror`` (Elasticsearch) the index is loaded there after its upload and before the
channel moves, and the mirror's pointer (an alias) moves only after the compare-and-swap won:
the store's channel never names an index the mirror lacks, the mirror never points at a
half-loaded index, and a lost race moves nothing.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from functions.artifact import DATA_FILES, MANIFEST, Artifact, Manifest, parse_manifest
from functions.catalog import (
    Pointer,
    channel_key,
    fetch_artifact,
    index_key,
    is_index_id,
    move_channel,
    read_channel,
    read_manifest,
    read_pointer,
)
from functions.errors import ObjectNotFound, WriteConflict
from functions.storage import Store

from .progress import Progress

__all__ = [
    "Check",
    "Collected",
    "IndexInfo",
    "Mirror",
    "catalog",
    "collect_garbage",
    "load",
    "missing_channel",
    "promote",
    "publish",
    "upload_index",
]

logger = logging.getLogger(__name__)


class Mirror(Protocol):
    """A second place that serves published indexes (Elasticsearch), following the store."""

    def load(
        self,
        manifest: Manifest,
        manifest_sha256: str,
        artifact: Callable[[Path], Artifact],
        progress: Progress,
    ) -> bool:
        """Load an index unless it is there already (False then); ``artifact`` opens its files."""
        ...

    def point(self, channel: str, index_id: str) -> None:
        """Point the channel there at a loaded index."""
        ...

    def collect(self, kept: set[str], *, dry_run: bool, incomplete_after: timedelta) -> list[str]:
        """Delete what no channel there names and ``kept`` lacks; returns what it deleted."""
        ...


# The quality gate (``quality.ChannelGate``): given the channel, the candidate's manifest and the
# index the channel names (None: none yet), it returns, or raises ``PromotionRefused``.
Check = Callable[[str, Manifest, str | None], None]


@dataclass(frozen=True)
class IndexInfo:
    """One index folder in the store."""

    index_id: str
    size: int
    modified: datetime
    complete: bool


@dataclass(frozen=True)
class Collected:
    """What gc deleted (or would delete): index ids, dead uploads' keys, the mirror's indexes."""

    indexes: list[str]
    uploads: list[str]
    mirrored: list[str] = field(default_factory=list)


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
        for name in manifest.files:  # the data files, and the partition index where built
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
        phase.notes.append(f"{len(manifest.files) + 1} files")
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
    mirror: Mirror | None = None,
    gate: Check | None = None,
    serving: str | None = None,
) -> Manifest:
    """Upload an index, load it into ``mirror``, and, if asked, move ``channel`` to it by
    compare-and-swap, then the mirror's channel; returns the manifest as published (an identical
    index already in the store keeps its own).

    ``gate``: asked before the channel moves, with ``serving``, the index the channel named
    when ``expected_etag`` was read; when it refuses, the index stays published, unpromoted.
    """
    progress = progress or Progress(bars=False)
    data = upload_index(store, directory, manifest, progress)
    published = parse_manifest(data)
    sha256 = hashlib.sha256(data).hexdigest()
    if mirror is not None:
        files = {name: directory / name for name in DATA_FILES}  # the files just uploaded
        mirror.load(published, sha256, lambda _: Artifact(published, files), progress)
    if channel is not None:
        if gate is not None:
            gate(channel, published, serving)
        pointer = Pointer(
            index_id=manifest.index_id,
            manifest_sha256=sha256,
            published_at=datetime.now(UTC),
        )
        move_channel(store, channel, pointer, expected_etag=expected_etag)
        if mirror is not None:
            _follow(store, mirror, channel, manifest.index_id)
    return published


def promote(
    store: Store,
    channel: str,
    index_id: str,
    *,
    expected_index: str | None = None,
    create_channel: bool = False,
    mirror: Mirror | None = None,
    progress: Progress | None = None,
    gate: Check | None = None,
) -> Pointer:
    """Point ``channel`` at an existing, valid index (compare-and-swap on the current pointer),
    loading it into ``mirror`` first and moving the mirror's channel after; ``gate``, when
    given, is asked before the channel moves (after the load: it may evaluate in the mirror).

    A channel that does not exist yet is created only with ``create_channel``: a typo in a
    channel's name must not quietly start a channel nothing follows.
    """
    channel_key(channel)  # refuse a bad name before touching the store
    index_key(index_id)  # an index id, not a channel name (read_manifest would take either)
    manifest = read_manifest(store, index_id)  # refuses a missing, incomplete or unreadable index
    data = store.get(index_key(index_id)).data
    current: Pointer | None = None
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
    if mirror is not None:
        mirror.load(
            manifest,
            pointer.manifest_sha256,
            lambda folder: fetch_artifact(store, manifest, folder),
            progress or Progress(bars=False),
        )
    if gate is not None:
        gate(channel, manifest, current.index_id if current is not None else None)
    move_channel(store, channel, pointer, expected_etag=expected)
    if mirror is not None:
        _follow(store, mirror, channel, index_id)
    return pointer


def load(
    store: Store, name: str, mirror: Mirror, progress: Progress | None = None
) -> tuple[Manifest, bool]:
    """Load the index ``name`` names (an index id, or a channel's current index) into
    ``mirror`` without embedding anything; for a channel, the mirror's channel follows (the
    store's stays). Returns the manifest, and whether it was loaded now (False: already there).
    """
    pointer = None if is_index_id(name) else read_pointer(store, name)
    manifest = read_manifest(store, name, pointer=pointer)  # checked against the pointer
    sha256 = (
        pointer.manifest_sha256
        if pointer is not None
        else hashlib.sha256(store.get(index_key(manifest.index_id)).data).hexdigest()
    )
    loaded = mirror.load(
        manifest,
        sha256,
        lambda folder: fetch_artifact(store, manifest, folder),
        progress or Progress(bars=False),
    )
    if pointer is not None:
        _follow(store, mirror, name, manifest.index_id)
    return manifest, loaded


def _follow(store: Store, mirror: Mirror, channel: str, index_id: str) -> None:
    """Move the mirror's channel to ``index_id``, which the store's channel named a moment ago.

    Two publishers that both won a compare-and-swap, one after the other, may move the mirror in
    the other order: the store is the truth, and ``load <channel>`` points the mirror there.
    """
    mirror.point(channel, index_id)
    now = read_channel(store, channel)[0].index_id
    if now != index_id:
        logger.warning(
            "channel %s moved on to %s meanwhile; to point its alias there too, run: load %s",
            channel,
            now,
            channel,
        )


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
    mirror: Mirror | None = None,
) -> Collected:
    """Delete all but the ``keep`` newest complete indexes, never one a channel points to.

    What a build that died mid-upload left is deleted once older than ``incomplete_after``, so
    a build uploading right now is left alone: index folders without a manifest, and uploads
    never completed (S3 multipart uploads, a local store's temporary files). In ``mirror``, what
    no channel there names and the store does not keep is deleted (a load not finished only
    once older than ``incomplete_after``).
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
        return Collected(
            doomed, uploads, _mirrored(mirror, indexes, doomed, incomplete_after, True)
        )
    deleted = []
    for index_id in doomed:
        # A channel may have moved since the listing: look again right before deleting.
        if index_id in {pointer.index_id for pointer in catalog(store)[1].values()}:
            continue
        # The manifest goes first, so a half-deleted index is never mistaken for a complete one.
        store.delete([index_key(index_id)])
        store.delete([item.key for item in store.list_objects(f"indexes/{index_id}/")])
        deleted.append(index_id)
    return Collected(deleted, uploads, _mirrored(mirror, indexes, deleted, incomplete_after, False))


def _mirrored(
    mirror: Mirror | None,
    indexes: list[IndexInfo],
    gone: list[str],
    incomplete_after: timedelta,
    dry_run: bool,
) -> list[str]:
    if mirror is None:
        return []
    kept = {info.index_id for info in indexes} - set(gone)
    return mirror.collect(kept, dry_run=dry_run, incomplete_after=incomplete_after)
