"""The benchmark's synthetic vectors: fixed by their seed, unit length, really clustered; the exact
top-k and recall that judge the approximate searches."""

from __future__ import annotations

import numpy as np
import pytest

from bench.clustered import clustered, exact_top_k, near_queries, recall, topics


def test_a_seed_fixes_the_vectors_and_the_queries() -> None:
    vectors = clustered(3000, 24, seed=5)
    assert np.array_equal(vectors, clustered(3000, 24, seed=5))
    assert not np.array_equal(vectors, clustered(3000, 24, seed=6))
    assert np.array_equal(near_queries(vectors, 7, seed=2), near_queries(vectors, 7, seed=2))


def test_shapes_types_and_unit_rows() -> None:
    vectors = clustered(70_000, 16)  # more than one chunk of rows
    queries = near_queries(vectors, 9)
    assert (vectors.shape, vectors.dtype, vectors.flags.c_contiguous) == (
        (70_000, 16),
        np.dtype(np.float32),
        True,
    )
    assert (queries.shape, queries.dtype) == ((9, 16), np.dtype(np.float32))
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(np.linalg.norm(queries, axis=1), 1, atol=1e-5)


def test_the_topics_are_uneven_and_the_rows_sit_near_their_own_centre() -> None:
    n, dim = 10_000, 64
    mix = topics(n, dim)
    vectors = clustered(n, dim)
    sizes = np.bincount(mix.labels, minlength=len(mix.centres))
    own = np.einsum("ij,ij->i", vectors, mix.centres[mix.labels])
    other = np.einsum("ij,ij->i", vectors, mix.centres[(mix.labels + 1) % len(mix.centres)])
    assert (len(mix.centres), sizes.sum()) == (200, n)
    assert sizes.max() > 3 * sizes.mean()  # Dirichlet(1), not uniform
    assert own.mean() > 0.6 > 0.05 > abs(other.mean())


def test_queries_are_near_rows_but_not_copies() -> None:
    vectors = clustered(2000, 64)
    queries = near_queries(vectors, 50)
    best = (queries @ vectors.T).max(axis=1)
    assert 0.8 < best.min() < best.max() < 0.99


@pytest.mark.parametrize("k", [1, 10, 37], ids=["k1", "k10", "k37"])
def test_exact_top_k_is_a_brute_force_sort(k: int) -> None:
    vectors = clustered(120_001, 8, seed=3)  # more than two blocks, the last of one row
    queries = near_queries(vectors, 5, seed=4)
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]
    found = exact_top_k(vectors, queries, k)
    assert (found.dtype, found.tolist()) == (np.dtype(np.int64), expected.tolist())


def test_recall_counts_the_overlap_per_query() -> None:
    vectors = clustered(500, 8)
    truth = exact_top_k(vectors, near_queries(vectors, 4), 10)
    assert recall(truth, truth) == 1.0
    assert recall([[*row[:5], -1, -2] for row in truth.tolist()], truth) == 0.5
    assert recall([[] for _ in truth], truth) == 0.0
