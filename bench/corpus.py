"""A deterministic synthetic corpus: N chunk-sized texts of 150-250 words, in sentences."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from functions.artifact import (
    PROBE_TEXT,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.embeddings import normalize
from functions.storage import Store
from index_builder.publish import publish

_WORDS = [
    "index",
    "vector",
    "query",
    "cluster",
    "service",
    "revision",
    "channel",
    "object",
    "storage",
    "latency",
    "model",
    "embed",
    "document",
    "chunk",
    "answer",
    "source",
    "function",
    "container",
    "image",
    "network",
    "request",
    "response",
    "cache",
    "memory",
    "disk",
    "thread",
    "process",
    "scale",
    "zero",
    "traffic",
    "route",
    "probe",
    "ready",
    "health",
    "error",
    "retry",
    "timeout",
    "build",
    "publish",
    "manifest",
    "pointer",
    "version",
    "artifact",
    "verify",
    "download",
    "upload",
    "stream",
    "search",
    "filter",
    "metadata",
    "score",
    "cosine",
    "matrix",
    "product",
    "partition",
    "sort",
    "batch",
    "token",
    "sentence",
    "paragraph",
    "section",
    "title",
    "author",
    "report",
    "policy",
    "customer",
    "order",
    "invoice",
    "payment",
    "account",
    "river",
    "mountain",
    "forest",
    "ocean",
    "desert",
    "city",
    "village",
    "road",
    "bridge",
    "harbour",
    "island",
    "valley",
    "morning",
    "evening",
    "winter",
    "summer",
    "spring",
    "autumn",
    "weather",
    "storm",
    "sun",
    "rain",
    "snow",
    "wind",
    "cloud",
    "the",
    "a",
    "of",
    "to",
    "and",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "was",
    "were",
    "has",
    "have",
]


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` texts of 150-250 words each, in sentences of 8-20 words."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(150, 251, n)
    words = rng.integers(0, len(_WORDS), int(lengths.sum()))
    breaks = rng.integers(8, 21, int(lengths.sum()))
    out, at = [], 0
    for i, length in enumerate(lengths):
        sentences, start = [], at
        while start < at + length:
            end = min(start + int(breaks[start]), at + length)
            sentence = " ".join(_WORDS[w] for w in words[start:end])
            sentences.append(sentence[0].upper() + sentence[1:] + ".")
            start = end
        out.append(f"Record {i}. " + " ".join(sentences))
        at += length
    return out


def write_files(directory: Path, corpus: list[str]) -> Path:
    """One text file per chunk-sized document, for the real index builder."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(corpus):
        (directory / f"doc-{i:06d}.txt").write_text(text)
    return directory


def vector(text: str, dim: int, model: str = "nomic-embed-text") -> np.ndarray:
    """The Ollama double's embedding of ``text`` (see tests/ollama_double.py)."""
    seed = int.from_bytes(
        hashlib.blake2b(f"{model}\0{text}".encode(), digest_size=8).digest(), "little"
    )
    return np.random.default_rng(seed).standard_normal(dim)


def publish_synthetic(
    store: Store, corpus: list[str], dim: int, work: Path, channel: str | None = "stable"
) -> str:
    """Write the artifact the builder would write for ``corpus`` (one chunk per document, the
    double's vectors) with the builder's own writer and publisher; returns the index id.
    ``channel`` (if any) must not exist yet."""
    vectors = normalize(np.stack([vector(text, dim) for text in corpus]))
    records = [
        NodeRecord(
            f"doc-{i:06d}.txt#0",
            f"doc-{i:06d}.txt",
            text,
            {"source": f"doc-{i:06d}.txt", "file_name": f"doc-{i:06d}.txt", "file_type": "txt"},
        )
        for i, text in enumerate(corpus)
    ]
    manifest = write_artifact(
        work,
        vectors=vectors,
        records=records,
        hashes=[content_hash("ollama:nomic-embed-text", r.text) for r in records],
        embedding=EmbeddingSpec(provider="ollama", model="nomic-embed-text", dim=dim),
        chunking=ChunkingSpec(chunk_size=512, chunk_overlap=64),
        counts=Counts(documents=len(corpus), chunks=len(corpus), embedded=len(corpus), reused=0),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in normalize(vector(PROBE_TEXT, dim))]),
        created_at=datetime.now(UTC),
        builder_version="bench",
    )
    publish(store, work, manifest, channel=channel, expected_etag=None)
    return manifest.index_id
