"""Building an index artifact: chunk with LlamaIndex, embed what is new, reuse what is not.

A chunk's embedding is identified by ``content_hash(model, text)``; when the channel's current
index already holds that hash, its vector is copied instead of embedded again, so a rebuild after
one changed document embeds only that document's chunks.

Chunking stops at the document that takes the build over ``Limits.chunks``, before anything is
embedded (the embedding model's probe included).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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
from functions.errors import ConfigurationError, InvalidRequest

from .limits import Limits
from .progress import Progress

__all__ = [
    "BuildPlan",
    "BuildReport",
    "build_artifact",
    "chunk_documents",
    "default_chunk_size",
    "plan_build",
]

_PROGRESS_BATCH = 512
# nltk's sentence splitting of one paragraph is one regular-expression search, and nltk (3.10)
# stops any search after 5 s: a document of a few million characters without blank lines would
# fail the build, sooner on a slower CPU. Its patterns are its own and linear; the text is
# bounded by the per-file limit. A document gets 5 s, and 1 s per 20,000 characters beyond.
_SPLIT_SECONDS_FLOOR = 5.0
_SPLIT_CHARS_PER_SECOND = 20_000


def default_chunk_size(provider: str) -> int:
    """512 tokens; 200 for the local model, which reads only its first 256 word pieces."""
    return 200 if provider == "local" else 512


@dataclass(frozen=True)
class BuildReport:
    """The manifest of the artifact written, and where it was written."""

    manifest: Manifest
    directory: Path


@dataclass(frozen=True)
class BuildPlan:
    """What a build of these documents would do: chunks, and which need embedding."""

    documents: int
    records: list[NodeRecord]
    hashes: list[bytes]
    todo: list[int]  # rows to embed
    reuse: dict[int, int]  # row -> row of the previous index whose vector it copies
    text_bytes: int

    @property
    def reused(self) -> int:
        return len(self.reuse)


def chunk_documents(
    documents: Sequence[Document],
    chunk_size: int,
    chunk_overlap: int,
    progress: Progress | None = None,
    *,
    limits: Limits | None = None,
) -> list[NodeRecord]:
    """Split documents with ``SentenceSplitter``; chunk ids are ``<document id>#<n>``.

    ``InvalidRequest`` once the chunks are more than ``limits.chunks``.
    """
    if chunk_overlap >= chunk_size:
        raise ConfigurationError(
            f"chunk overlap {chunk_overlap} must be below chunk size {chunk_size}"
        )
    limits = limits or Limits()
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    records = []
    progress = progress or Progress(bars=False)
    with progress.phase("chunking", len(documents), "documents") as phase:
        for done, document in enumerate(documents, start=1):
            seconds = max(_SPLIT_SECONDS_FLOOR, len(document.text) / _SPLIT_CHARS_PER_SECOND)
            try:
                with _sentence_search_time(seconds):
                    nodes = splitter.get_nodes_from_documents([document])
            except TimeoutError as exc:
                raise InvalidRequest(
                    f"could not split {document.id_} into sentences in {seconds:.0f} s"
                ) from exc
            for n, node in enumerate(nodes):
                text = node.get_content(metadata_mode=MetadataMode.NONE)
                if text.strip():
                    records.append(
                        NodeRecord(f"{document.id_}#{n}", document.id_, text, dict(node.metadata))
                    )
            if len(records) > limits.chunks:
                raise InvalidRequest(limits.too_many_chunks(len(records), done, len(documents)))
            phase.update(1)
        phase.notes.append(f"{len(records)} chunks")
    return records


@contextmanager
def _sentence_search_time(seconds: float) -> Iterator[None]:
    """nltk's limit on one regular-expression search, for the time of one document."""
    try:
        redos: Any = importlib.import_module("nltk.redos")
    except ImportError:  # an nltk without the limit
        yield
        return
    saved = redos.DEFAULT_TIMEOUT
    redos.DEFAULT_TIMEOUT = seconds
    try:
        yield
    finally:
        redos.DEFAULT_TIMEOUT = saved


def plan_build(
    documents: Sequence[Document],
    model_key: str,
    *,
    chunk_size: int,
    chunk_overlap: int,
    previous_hashes: Sequence[bytes] | None = None,
    progress: Progress | None = None,
    limits: Limits | None = None,
) -> BuildPlan:
    """Chunk, hash, and match hashes against those of a previous index of the same model."""
    records = chunk_documents(documents, chunk_size, chunk_overlap, progress, limits=limits)
    return _plan(len(documents), records, model_key, previous_hashes)


def _plan(
    documents: int,
    records: list[NodeRecord],
    model_key: str,
    previous_hashes: Sequence[bytes] | None,
) -> BuildPlan:
    if not records:
        raise ConfigurationError("the documents hold no text to index")
    hashes = [content_hash(model_key, record.text) for record in records]
    reusable: dict[bytes, int] = {}
    if previous_hashes is not None:
        reusable = {bytes(h): row for row, h in enumerate(previous_hashes)}
    reuse = {row: reusable[digest] for row, digest in enumerate(hashes) if digest in reusable}
    todo = [row for row in range(len(records)) if row not in reuse]
    text_bytes = sum(len(record.text.encode()) for record in records)
    return BuildPlan(documents, records, hashes, todo, reuse, text_bytes)


def build_artifact(
    documents: Sequence[Document],
    embedder: Embedder,
    out_dir: Path,
    *,
    chunk_size: int,
    chunk_overlap: int,
    previous: Artifact | None = None,
    now: datetime | None = None,
    progress: Progress | None = None,
    limits: Limits | None = None,
) -> BuildReport:
    """Chunk, embed (reusing ``previous`` where possible) and write an artifact to ``out_dir``."""
    progress = progress or Progress(bars=False)
    records = chunk_documents(documents, chunk_size, chunk_overlap, progress, limits=limits)
    probe = embedder.embed_query(PROBE_TEXT)
    plan = _plan(
        len(documents),
        records,
        f"{embedder.provider}:{embedder.model}",
        (
            list(previous.hashes)
            if previous is not None and previous.manifest.embedding.dim == probe.shape[0]
            else None
        ),
    )
    records = plan.records
    vectors = np.empty((len(records), probe.shape[0]), dtype=np.float32)
    for row, old in plan.reuse.items():
        vectors[row] = previous.vectors[old]  # type: ignore[union-attr]
    todo = plan.todo
    with progress.phase("embedding", len(todo), "chunks") as phase:
        for start in range(0, len(todo), _PROGRESS_BATCH):
            rows = todo[start : start + _PROGRESS_BATCH]
            vectors[rows] = embedder.embed_documents([records[row].text for row in rows])
            phase.update(len(rows))
        phase.notes.append(f"{plan.reused} reused")

    manifest = write_artifact(
        out_dir,
        vectors=vectors,
        records=records,
        hashes=plan.hashes,
        embedding=EmbeddingSpec(
            provider=embedder.provider, model=embedder.model, dim=probe.shape[0]
        ),
        chunking=ChunkingSpec(chunk_size=chunk_size, chunk_overlap=chunk_overlap),
        counts=Counts(
            documents=plan.documents,
            chunks=len(records),
            embedded=len(todo),
            reused=plan.reused,
        ),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in probe]),
        created_at=now or datetime.now(UTC),
        builder_version=__version__,
    )
    return BuildReport(manifest, out_dir)
