"""The whole build job: read the channel, reuse its index, read and embed sources, publish.

The channel's ETag is read before anything else, and the final compare-and-swap is against it:
if another publisher moves the channel while this build runs, this build's index is uploaded
(it is complete and valid) but the channel is not moved, and the caller is told.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from functions.artifact import Artifact, Manifest
from functions.catalog import channel_key, fetch_artifact, read_channel, read_manifest
from functions.embeddings import Embedder
from functions.errors import ObjectNotFound
from functions.storage import Store

from .build import build_artifact, default_chunk_size
from .publish import publish
from .sources import load_documents

__all__ = ["run_build"]


def run_build(
    store: Store,
    source: str,
    embedder: Embedder,
    *,
    channel: str | None,
    chunk_size: int | None = None,
    chunk_overlap: int = 64,
) -> Manifest:
    """Build an index of ``source`` and publish it; move ``channel`` to it if given."""
    with tempfile.TemporaryDirectory(prefix="rag-build-") as tmp:
        previous: Artifact | None = None
        expected_etag: str | None = None
        if channel:
            channel_key(channel)  # refuse a bad name before an hour of embedding, not after
            try:
                pointer, expected_etag = read_channel(store, channel)
            except ObjectNotFound:
                pointer = None
            if pointer is not None:
                current = read_manifest(store, pointer.index_id)
                embedding = (current.embedding.provider, current.embedding.model)
                if embedding == (
                    embedder.provider,
                    embedder.model,
                ):  # other models' vectors can't be reused
                    previous = fetch_artifact(store, current, Path(tmp) / "previous")
        report = build_artifact(
            load_documents(source),
            embedder,
            Path(tmp) / "new",
            chunk_size=chunk_size or default_chunk_size(embedder.provider),
            chunk_overlap=chunk_overlap,
            previous=previous,
        )
        publish(
            store, report.directory, report.manifest, channel=channel, expected_etag=expected_etag
        )
        return report.manifest
