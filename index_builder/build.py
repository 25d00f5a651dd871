"""Building an index artifact: chunk with LlamaIndex, embed what is new, reuse what is not.

A chunk's embedding is identified by ``content_hash(model, text)``; when the channel's current
index already holds that hash, its vector is copied instead of embedded again, so a rebuild after
one changed document embeds only that document's chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from llama_index.core import Document
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import MetadataMode

from functions import __version__
from functions.artifact import (
    PROBE_TEXT,
    Artifact,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    Manifest,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.embeddings import Embedder
from functions.errors import ConfigurationError

__all__ = ["BuildReport", "build_artifact", "chunk_documents", "default_chunk_size"]

logger = logging.getLogger(__name__)

_PROGRESS_BATCH = 512


def default_chunk_size(provider: str) -> int:
    """512 tokens; 200 for the local model, which reads only its first 256 word pieces."""
    return 200 if provider == "local" else 512


@dataclass(frozen=True)
class BuildReport:
    """The manifest of the artifact written, and where it was written."""

    manifest: Manifest
    directory: Path


def chunk_documents(
    documents: Sequence[Document], chunk_size: int, chunk_overlap: int
) -> list[NodeRecord]:
    """Split documents with ``SentenceSplitter``; chunk ids are ``<document id>#<n>``."""
    if chunk_overlap >= chunk_size:
        raise ConfigurationError(
            f"chunk overlap {chunk_overlap} must be below chunk size {chunk_size}"
        )
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    records = []
    for document in documents:
        for n, node in enumerate(splitter.get_nodes_from_documents([document])):
            text = node.get_content(metadata_mode=MetadataMode.NONE)
            if text.strip():
                records.append(
                    NodeRecord(f"{document.id_}#{n}", document.id_, text, dict(node.metadata))
                )
    return records


def build_artifact(
    documents: Sequence[Document],
    embedder: Embedder,
    out_dir: Path,
    *,
    chunk_size: int,
    chunk_overlap: int,
    previous: Artifact | None = None,
    now: datetime | None = None,
) -> BuildReport:
    """Chunk, embed (reusing ``previous`` where possible) and write an artifact to ``out_dir``."""
    records = chunk_documents(documents, chunk_size, chunk_overlap)
    if not records:
        raise ConfigurationError("the documents hold no text to index")
    model_key = f"{embedder.provider}:{embedder.model}"
    hashes = [content_hash(model_key, record.text) for record in records]
    probe = embedder.embed_query(PROBE_TEXT)
    vectors = np.empty((len(records), probe.shape[0]), dtype=np.float32)

    reusable: dict[bytes, int] = {}
    if previous is not None and previous.manifest.embedding.dim == probe.shape[0]:
        reusable = {bytes(h): row for row, h in enumerate(previous.hashes)}
    todo = []
    for row, digest in enumerate(hashes):
        if digest in reusable:
            vectors[row] = previous.vectors[reusable[digest]]  # type: ignore[union-attr]
        else:
            todo.append(row)
    for start in range(0, len(todo), _PROGRESS_BATCH):
        rows = todo[start : start + _PROGRESS_BATCH]
        vectors[rows] = embedder.embed_documents([records[row].text for row in rows])
        logger.info("embedded %d/%d chunks", min(start + _PROGRESS_BATCH, len(todo)), len(todo))

    manifest = write_artifact(
        out_dir,
        vectors=vectors,
        records=records,
        hashes=hashes,
        embedding=EmbeddingSpec(
            provider=embedder.provider, model=embedder.model, dim=probe.shape[0]
        ),
        chunking=ChunkingSpec(chunk_size=chunk_size, chunk_overlap=chunk_overlap),
        counts=Counts(
            documents=len(documents),
            chunks=len(records),
            embedded=len(todo),
            reused=len(records) - len(todo),
        ),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in probe]),
        created_at=now or datetime.now(UTC),
        builder_version=__version__,
    )
    return BuildReport(manifest, out_dir)
