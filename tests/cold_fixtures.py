"""Clustered artifacts with a partition index, and a store that reads like a remote one, for the
tests of the cold path (answering by ranged reads) and of the switch to memory."""

from __future__ import annotations

import shutil
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from functions.artifact import (
    PROBE_TEXT,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    Manifest,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.catalog import read_channel
from functions.storage import Fetched, LocalStore
from index_builder.publish import publish

DIM = 48
PROBE = np.eye(DIM, dtype=np.float32)[0]


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around ``2 sqrt(n)`` topic centres of uneven sizes (bench/clustered.py's
    recipe, small)."""
    rng = np.random.default_rng(seed)
    topics = 2 * round(n**0.5)
    centres = rng.standard_normal((topics, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.choice(topics, n, p=rng.dirichlet(np.ones(topics)))
    spread = rng.uniform(0.6, 1.2, topics)[topic, None]
    vectors = centres[topic] + spread * rng.standard_normal((n, DIM)) / np.sqrt(DIM)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Queries near existing rows."""
    rng = np.random.default_rng(seed)
    picked = vectors[rng.choice(len(vectors), count, replace=False)]
    queries = picked + 0.5 * rng.standard_normal(picked.shape) / np.sqrt(DIM)
    return (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)


def records(n: int, tag: str = "") -> list[NodeRecord]:
    """Records with metadata: ``k`` (seven values), ``rare`` (on 1 chunk in 500)."""
    return [
        NodeRecord(
            f"node-{i:05d}{tag}",
            f"doc-{i // 4}{tag}",
            f"chunk {i}{tag} text",
            {"k": i % 7, **({"rare": True} if i % 500 == 0 else {})},
        )
        for i in range(n)
    ]


def write(folder: Path, vectors: np.ndarray, partitions: int, *, tag: str = "") -> Manifest:
    """Write an artifact of ``vectors`` with ``partitions`` partitions."""
    n = len(vectors)
    recs = records(n, tag)
    return write_artifact(
        folder,
        vectors=vectors,
        records=recs,
        hashes=[content_hash("test:model", r.text) for r in recs],
        embedding=EmbeddingSpec(provider="test", model="model", dim=DIM),
        chunking=ChunkingSpec(chunk_size=100, chunk_overlap=10),
        counts=Counts(documents=n // 4, chunks=n, embedded=n, reused=0),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in PROBE]),
        created_at=datetime(2026, 12, 3, 10, 0, int(tag or 0), tzinfo=UTC),
        builder_version="test",
        partitions=partitions,
    )


def publish_to(store: LocalStore, folder: Path, manifest: Manifest, channel: str) -> None:
    """Publish an index and move (or create) ``channel`` to it."""
    try:
        etag: str | None = read_channel(store, channel)[1]
    except Exception:
        etag = None
    publish(store, folder, manifest, channel=channel, expected_etag=etag)


class Remote:
    """A local store that a backend takes for a remote one (it is no ``LocalStore``): it counts
    ranged reads, and can hold whole-file downloads at a gate."""

    def __init__(self, inner: LocalStore) -> None:
        self.inner = inner
        self.uri = inner.uri
        self.gate = threading.Event()
        self.gate.set()
        self.fetching = threading.Event()  # set once a download has begun
        self.fetched: list[str] = []
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        self.reads += 1
        return self.inner.read_range(key, start, end)

    def fetch(self, key: str, dest: Path, *, size: int, block_size: int) -> Fetched:
        self.fetching.set()
        assert self.gate.wait(30), "the test never opened the gate"
        fetched = self.inner.fetch(key, dest, size=size, block_size=block_size)
        # A copy in the cache, as from S3: retiring the index must remove it.
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(fetched.path, dest)
        self.fetched.append(key)
        return Fetched(dest, fetched.size, fetched.blocks)


@dataclass
class Corpus:
    """A published clustered index, its vectors and queries near them."""

    store: LocalStore
    folder: Path
    manifest: Manifest
    vectors: np.ndarray
    queries: np.ndarray


class TableEmbedder:
    """Embeds the probe text as the index's probe, and nothing else (queries come as vectors)."""

    provider = "test"
    model = "model"

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return np.stack([self.embed_query(text) for text in texts])

    def embed_query(self, text: str) -> np.ndarray:
        assert text == PROBE_TEXT, text
        return PROBE
