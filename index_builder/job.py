"""The whole build job: read the channel, reuse its index, read and embed sources, publish.

The channel's ETag is read before anything else, and the final compare-and-swap is against it:
if another publisher moves the channel while this build runs, this build's index is uploaded
(it is complete and valid) but the channel is not moved, and the caller is told.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from functions.artifact import Manifest
from functions.catalog import (
    channel_key,
    fetch_artifact,
    fetch_file,
    read_channel,
    read_manifest,
)
from functions.embeddings import Embedder
from functions.errors import ObjectNotFound
from functions.storage import Store

from .build import BuildPlan, build_artifact, default_chunk_size, plan_build
from .limits import Limits
from .progress import Progress
from .publish import Check, Mirror, missing_channel, publish
from .sources import OnUnreadable, load_documents

__all__ = ["DryRun", "dry_run", "run_build"]


@dataclass(frozen=True)
class DryRun:
    """What ``run_build`` would do, without embedding or uploading anything."""

    plan: BuildPlan
    previous_index: str | None  # the channel's index whose vectors would be reused
    dim: int | None  # known from that index when it was built with the same model

    @property
    def estimated_bytes(self) -> int | None:
        """Roughly what would be uploaded: vectors, text and per-chunk columns."""
        if self.dim is None:
            return None
        chunks = len(self.plan.records)
        return chunks * (self.dim * 4 + 16 + 8 + 64) + self.plan.text_bytes


def run_build(
    store: Store,
    source: str,
    embedder: Embedder,
    *,
    channel: str | None,
    create_channel: bool = False,
    chunk_size: int | None = None,
    chunk_overlap: int = 64,
    on_unreadable: OnUnreadable = "skip",
    limits: Limits | None = None,
    progress: Progress | None = None,
    mirror: Mirror | None = None,
    gate: Check | None = None,
) -> Manifest:
    """Build an index of ``source`` and publish it (and load it into ``mirror``); move
    ``channel`` to it if given, and if ``gate`` (when given) lets it.

    Before anything is read or embedded, the store must be writable (a missing bucket, wrong
    credentials or a server without conditional writes fail here, not after an hour of
    embedding) and ``channel`` must exist, unless ``create_channel``. Files over ``limits`` are
    unreadable; a build over the chunk limit fails before anything is embedded.
    """
    progress = progress or Progress(bars=False)
    with tempfile.TemporaryDirectory(prefix="rag-build-") as tmp:
        expected_etag, serving, manifest = _current(store, channel, embedder, create_channel)
        store.check(write=True)
        previous = (
            fetch_artifact(store, manifest, Path(tmp) / "previous")
            if manifest is not None
            else None
        )
        report = build_artifact(
            load_documents(source, progress, on_unreadable=on_unreadable, limits=limits),
            embedder,
            Path(tmp) / "new",
            chunk_size=chunk_size or default_chunk_size(embedder.provider),
            chunk_overlap=chunk_overlap,
            previous=previous,
            progress=progress,
            limits=limits,
        )
        return publish(
            store,
            report.directory,
            report.manifest,
            channel=channel,
            expected_etag=expected_etag,
            progress=progress,
            mirror=mirror,
            gate=gate,
            serving=serving,
        )


def dry_run(
    store: Store,
    source: str,
    embedder: Embedder,
    *,
    channel: str | None,
    create_channel: bool = False,
    chunk_size: int | None = None,
    chunk_overlap: int = 64,
    on_unreadable: OnUnreadable = "skip",
    limits: Limits | None = None,
    progress: Progress | None = None,
) -> DryRun:
    """Read and chunk ``source`` and compare with the channel's index; embed and upload nothing.

    Only the previous index's content hashes are fetched (16 bytes a chunk), and the model server
    is not called: reuse is decided by content hashes, which include the model.
    """
    store.check()
    with tempfile.TemporaryDirectory(prefix="rag-plan-") as tmp:
        _, _, manifest = _current(store, channel, embedder, create_channel)
        hashes: list[bytes] | None = None
        if manifest is not None:
            path = fetch_file(store, manifest, "hashes.bin", Path(tmp))
            data = path.read_bytes()
            hashes = [data[i : i + 16] for i in range(0, len(data), 16)]
        plan = plan_build(
            load_documents(source, progress, on_unreadable=on_unreadable, limits=limits),
            f"{embedder.provider}:{embedder.model}",
            chunk_size=chunk_size or default_chunk_size(embedder.provider),
            chunk_overlap=chunk_overlap,
            previous_hashes=hashes,
            progress=progress,
            limits=limits,
        )
        return DryRun(
            plan,
            manifest.index_id if manifest is not None else None,
            manifest.embedding.dim if manifest is not None else None,
        )


def _current(
    store: Store, channel: str | None, embedder: Embedder, create_channel: bool
) -> tuple[str | None, str | None, Manifest | None]:
    """The channel's ETag (for the final compare-and-swap), the index it names (the gate's
    serving index), and that index's manifest when it was built with the same model (other
    models' vectors cannot be reused)."""
    if not channel:
        return None, None, None
    channel_key(channel)  # refuse a bad name before an hour of embedding, not after
    try:
        pointer, etag = read_channel(store, channel)
    except ObjectNotFound:
        if not create_channel:
            raise missing_channel(store, channel) from None
        return None, None, None
    manifest = read_manifest(store, pointer.index_id)
    if (manifest.embedding.provider, manifest.embedding.model) != (
        embedder.provider,
        embedder.model,
    ):
        return etag, pointer.index_id, None
    return etag, pointer.index_id, manifest
