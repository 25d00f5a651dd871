"""Random artifacts for tests of the format, search and the vector store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from functions.artifact import (
    MANIFEST,
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
from functions.embeddings import normalize

COLOURS = ["red", "green", "blue"]


def random_artifact(
    directory: Path, n: int = 500, dim: int = 32, seed: int = 7
) -> tuple[Artifact, np.ndarray]:
    """An artifact of ``n`` random unit vectors with metadata ``colour``, ``rank``, ``even``.

    Returns the mapped artifact and the float64 vectors it was written from, row for row: it
    has no partition index (which would order the rows by partition).
    """
    rng = np.random.default_rng(seed)
    vectors = normalize(rng.standard_normal((n, dim)))
    records = [
        NodeRecord(
            f"doc-{i // 5}#{i % 5}",
            f"doc-{i // 5}",
            f"chunk {i} text ünïcode",
            {
                "colour": COLOURS[i % 3],
                "rank": i % 10,
                "even": i % 2 == 0,
                "tags": ["list", "ignored"],
            },
        )
        for i in range(n)
    ]
    manifest = write_artifact(
        directory,
        vectors=vectors,
        records=records,
        hashes=[content_hash("test:model", r.text) for r in records],
        embedding=EmbeddingSpec(provider="test", model="model", dim=dim),
        chunking=ChunkingSpec(chunk_size=100, chunk_overlap=10),
        counts=Counts(documents=n // 5, chunks=n, embedded=n, reused=0),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in vectors[0]]),
        created_at=datetime(2026, 11, 27, 8, 15, 0, tzinfo=UTC),
        builder_version="test",
        partitions=0,
    )
    return open_dir(directory, manifest), vectors.astype(np.float64)


def artifact_of(
    directory: Path,
    vectors: np.ndarray,
    records: list[NodeRecord],
    *,
    provider: str = "test",
    model: str = "model",
    probe: list[float] | None = None,
) -> Artifact:
    """An artifact of these (already normalised) vectors and records, written by the writer;
    ``probe`` is the model's vector of ``PROBE_TEXT`` (for a function to model-check)."""
    dim = vectors.shape[1]
    manifest = write_artifact(
        directory,
        vectors=vectors.astype(np.float32),
        records=records,
        hashes=[content_hash(f"{provider}:{model}", r.text) for r in records],
        embedding=EmbeddingSpec(provider=provider, model=model, dim=dim),
        chunking=ChunkingSpec(chunk_size=100, chunk_overlap=10),
        counts=Counts(documents=1, chunks=len(records), embedded=len(records), reused=0),
        probe=Probe(text=PROBE_TEXT, vector=probe or [1.0] + [0.0] * (dim - 1)),
        created_at=datetime(2026, 11, 27, 8, 15, 0, tzinfo=UTC),
        builder_version="test",
    )
    return open_dir(directory, manifest)


def open_dir(directory: Path, manifest: Manifest | None = None) -> Artifact:
    """Map an artifact folder (no integrity check: the tests of checks use the store)."""
    manifest = manifest or Manifest.model_validate_json((directory / MANIFEST).read_bytes())
    return Artifact(manifest, {name: directory / name for name in manifest.files})
