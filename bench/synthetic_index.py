"""A synthetic artifact of random unit vectors and given records, for the search benchmarks.

It takes the artifact module as an argument instead of importing it: the benchmarks that use it
import ``functions`` from the checkout named by their ``--code`` (to measure code before and
after a change), and this module must not import it first from elsewhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_random_artifact"]


def write_random_artifact(
    formats: Any, folder: Path, records: list[Any], dim: int, rng: np.random.Generator
) -> Any:
    """Write an artifact of ``records`` with random unit vectors of ``dim`` to ``folder``; the
    ``formats.Artifact`` that reads it."""
    n = len(records)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    manifest = formats.write_artifact(
        folder,
        vectors=vectors,
        records=records,
        hashes=[formats.content_hash("b", r.text) for r in records],
        embedding=formats.EmbeddingSpec(provider="bench", model="m", dim=dim),
        chunking=formats.ChunkingSpec(chunk_size=512, chunk_overlap=0),
        counts=formats.Counts(documents=n // 20, chunks=n, embedded=n, reused=0),
        probe=formats.Probe(text="p", vector=[0.0] * dim),
        created_at=datetime(2026, 12, 1, tzinfo=UTC),
        builder_version="bench",
    )
    return formats.Artifact(manifest, {name: folder / name for name in manifest.files})
