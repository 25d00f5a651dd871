"""Clustered synthetic vectors for the vector-search benchmarks, their queries and exact answers.

The recipe (the benchmarks state it with their figures):

- ``clusters = 2 * round(sqrt(n))`` topics (at least one); each topic centre is a standard normal
  vector scaled to unit length;
- topic sizes follow a Dirichlet(alpha=1) draw over the topics (uneven, not uniform), realised as
  a multinomial of ``n``; rows are shuffled, so topics are interleaved in row order;
- each topic has a spread ``s ~ Uniform(0.6, 1.2)``; a vector is ``centre + s * g / sqrt(dim)``
  with ``g`` standard normal, then L2-normalised (cosine to its own centre about
  ``1 / sqrt(1 + s^2)``, 0.64 to 0.86; to another centre about 0 +- 1 / sqrt(dim));
- a query picks a random existing row and adds ``0.5 * g / sqrt(dim)``, then L2-normalises:
  near existing vectors, never a copy of one.

Seeds are fixed (vectors 0, queries 1). The rows are drawn in chunks of 65,536, each from its own
stream (``SeedSequence(seed, spawn_key=(1, chunk))``) on up to four threads, so the output does
not depend on the thread count, and 1M x 768 (3 GB of float32) needs about 4 GB at its peak.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

__all__ = ["Topics", "cached", "clustered", "exact_top_k", "near_queries", "recall", "topics"]

_CHUNK_ROWS = 65_536
_BLOCK_ROWS = 50_000
_QUERY_NOISE = 0.5


class Topics(NamedTuple):
    """The mixture behind ``clustered``: unit centres, each row's topic, each topic's spread."""

    centres: np.ndarray  # float32 (clusters, dim), unit rows
    labels: np.ndarray  # int64 (n,)
    spread: np.ndarray  # float32 (clusters,)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=stream))


def _normalise(rows: np.ndarray) -> None:
    rows /= np.sqrt(np.einsum("ij,ij->i", rows, rows))[:, None]


def topics(n: int, dim: int, *, seed: int = 0) -> Topics:
    """The topic mixture that ``clustered(n, dim, seed=seed)`` draws its rows from."""
    if n < 1 or dim < 1:
        raise ValueError(f"n and dim must be positive, got {n} x {dim}")
    rng = _rng(seed, 0)
    clusters = max(1, 2 * round(math.sqrt(n)))
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    _normalise(centres)
    sizes = rng.multinomial(n, rng.dirichlet(np.ones(clusters)))
    labels = rng.permutation(np.repeat(np.arange(clusters, dtype=np.int64), sizes))
    spread = rng.uniform(0.6, 1.2, clusters).astype(np.float32)
    return Topics(centres, labels, spread)


def clustered(n: int, dim: int, *, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors of ``dim`` from a mixture of uneven topics (the module's recipe)."""
    mix = topics(n, dim, seed=seed)
    scale = mix.spread / np.float32(math.sqrt(dim))
    out = np.empty((n, dim), dtype=np.float32)
    # A reused buffer per thread for the gathered centres: a fresh 200 MB temporary per chunk
    # costs more in page faults than the arithmetic does. take's default mode="raise" would copy
    # through a second buffer; the labels are in range, so "clip" changes nothing else.
    local = threading.local()

    def fill(chunk: int) -> None:
        start = chunk * _CHUNK_ROWS
        rows = out[start : start + _CHUNK_ROWS]
        labels = mix.labels[start : start + _CHUNK_ROWS]
        if not hasattr(local, "centres"):
            local.centres = np.empty((min(n, _CHUNK_ROWS), dim), dtype=np.float32)
        _rng(seed, 1, chunk).standard_normal(rows.shape, dtype=np.float32, out=rows)
        rows *= scale[labels][:, None]
        rows += np.take(mix.centres, labels, axis=0, out=local.centres[: len(rows)], mode="clip")
        _normalise(rows)

    # numpy releases the GIL in these loops, so threads use the cores.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(pool.map(fill, range(math.ceil(n / _CHUNK_ROWS))))
    return out


def near_queries(vectors: np.ndarray, count: int, *, seed: int = 1) -> np.ndarray:
    """``count`` unit queries, each a random row of ``vectors`` plus a little normal noise."""
    rng = np.random.default_rng(seed)
    dim = vectors.shape[1]
    picks = rng.integers(0, len(vectors), count)
    noise = rng.standard_normal((count, dim), dtype=np.float32)
    queries = vectors[picks].astype(np.float32) + np.float32(_QUERY_NOISE / math.sqrt(dim)) * noise
    _normalise(queries)
    return queries


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row ids of the ``k`` rows with the highest cosine to each query, best first (exact)."""
    n = len(vectors)
    if not 0 < k <= n:
        raise ValueError(f"k must be in 1..{n}, got {k}")
    q = np.ascontiguousarray(queries, dtype=np.float32)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    best_scores = np.full((len(q), 0), -np.inf, dtype=np.float32)
    best_ids = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, n, _BLOCK_ROWS):
        block = np.asarray(vectors[start : start + _BLOCK_ROWS], dtype=np.float32)
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))
        scores = (q @ block.T) / norms
        scores = np.concatenate([best_scores, scores], axis=1)
        ids = np.concatenate(
            [best_ids, np.broadcast_to(np.arange(start, start + len(block)), (len(q), len(block)))],
            axis=1,
        )
        keep = np.argpartition(-scores, k - 1, axis=1)[:, :k] if scores.shape[1] > k else None
        if keep is not None:
            scores = np.take_along_axis(scores, keep, axis=1)
            ids = np.take_along_axis(ids, keep, axis=1)
        best_scores, best_ids = scores, ids
    order = np.lexsort((best_ids, -best_scores), axis=-1)
    return np.take_along_axis(best_ids, order, axis=1).astype(np.int64)


def recall(found: np.ndarray | Sequence[Sequence[int]], truth: np.ndarray) -> float:
    """Mean over queries of ``|found_i & truth_i| / k``, ``k`` being ``truth``'s width."""
    if len(found) != len(truth):
        raise ValueError(f"{len(found)} answers for {len(truth)} queries")
    k = truth.shape[1]
    hits = [len(set(map(int, f)) & set(map(int, t))) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k if hits else 0.0


def cached(
    folder: Path, n: int, dim: int, count: int, k: int = 10
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``clustered(n, dim)``, ``count`` near queries and their exact top ``k``, kept in
    ``folder`` as vectors.npy, queries.npy and truth.npy (the vectors memory-mapped)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {name: folder / f"{name}.npy" for name in ("vectors", "queries", "truth")}
    if not files["vectors"].exists():
        print(f"generating {n} x {dim} clustered vectors ...", flush=True)
        np.save(files["vectors"], clustered(n, dim))
    vectors = np.load(files["vectors"], mmap_mode="r")
    queries = np.load(files["queries"]) if files["queries"].exists() else None
    truth = np.load(files["truth"]) if files["truth"].exists() else None
    if queries is None or truth is None or len(queries) != count or truth.shape[1] != k:
        queries = near_queries(vectors, count)
        truth = exact_top_k(vectors, queries, k)
        np.save(files["queries"], queries)
        np.save(files["truth"], truth)
    return vectors, queries, truth
