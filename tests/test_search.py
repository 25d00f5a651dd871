from __future__ import annotations

import threading
import weakref
from pathlib import Path

import numpy as np
import pytest

from functions.errors import InvalidRequest, UnsupportedFilter
from functions.search import Condition, FilterGroup, SearchIndex, equality_filter

from .artifacts import random_artifact


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> tuple[SearchIndex, np.ndarray]:
    artifact, vectors = random_artifact(tmp_path_factory.mktemp("search"), n=2000, dim=48)
    return SearchIndex(artifact), vectors


def brute_force(
    vectors: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None = None
) -> list[int]:
    """float64 reference: every score, a full sort."""
    candidates = np.arange(len(vectors)) if rows is None else rows
    scores = vectors[candidates] @ (query / np.linalg.norm(query))
    return [int(candidates[i]) for i in np.argsort(-scores, kind="stable")[:k]]


@pytest.mark.parametrize("k", [1, 5, 50], ids=["k1", "k5", "k50"])
def test_matches_float64_brute_force(indexed: tuple[SearchIndex, np.ndarray], k: int) -> None:
    index, vectors = indexed
    rng = np.random.default_rng(3)
    for _ in range(20):
        query = rng.standard_normal(48)
        hits = index.search(query.astype(np.float32), k)
        assert [hit.row for hit in hits] == brute_force(vectors, query, k)
        expected = vectors[[hit.row for hit in hits]] @ (query / np.linalg.norm(query))
        np.testing.assert_allclose([hit.score for hit in hits], expected, atol=1e-5)


def test_filtered_search_matches_brute_force_on_the_admitted_rows(
    indexed: tuple[SearchIndex, np.ndarray],
) -> None:
    index, vectors = indexed
    query = np.random.default_rng(4).standard_normal(48)
    hits = index.search(
        query.astype(np.float32), 10, equality_filter({"colour": "blue", "even": True})
    )
    admitted = np.array([i for i in range(len(vectors)) if i % 3 == 2 and i % 2 == 0])
    assert [hit.row for hit in hits] == brute_force(vectors, query, 10, admitted)
    assert {(hit.record.metadata["colour"], hit.record.metadata["even"]) for hit in hits} == {
        ("blue", True)
    }


def rows_of(index: SearchIndex, where: FilterGroup) -> set[int]:
    return {int(i) for i in np.flatnonzero(index.mask(where))}


ALL = set(range(2000))


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        (FilterGroup((Condition("colour", "==", "red"),)), {i for i in ALL if i % 3 == 0}),
        (FilterGroup((Condition("colour", "!=", "red"),)), {i for i in ALL if i % 3 != 0}),
        (FilterGroup((Condition("rank", ">", 7),)), {i for i in ALL if i % 10 > 7}),
        (FilterGroup((Condition("rank", "<=", 1),)), {i for i in ALL if i % 10 <= 1}),
        (FilterGroup((Condition("rank", "in", [2, 3]),)), {i for i in ALL if i % 10 in (2, 3)}),
        (
            FilterGroup((Condition("colour", "nin", ["red", "blue"]),)),
            {i for i in ALL if i % 3 == 1},
        ),
        (
            FilterGroup((Condition("colour", "==", "red"), Condition("rank", "==", 0)), "or"),
            {i for i in ALL if i % 3 == 0 or i % 10 == 0},
        ),
        (
            FilterGroup(
                (
                    FilterGroup((Condition("rank", "<", 2), Condition("rank", ">", 8)), "or"),
                    Condition("even", "==", True),
                )
            ),
            {i for i in ALL if (i % 10 < 2 or i % 10 > 8) and i % 2 == 0},
        ),
        (FilterGroup((Condition("absent", "==", "x"),)), set()),
        (FilterGroup((Condition("colour", ">", 3),)), set()),
        (FilterGroup(()), ALL),
    ],
    ids=[
        "eq",
        "ne",
        "gt",
        "lte",
        "in",
        "nin",
        "or",
        "nested",
        "unknown-key",
        "type-mismatch",
        "empty",
    ],
)
def test_filter_operators(
    indexed: tuple[SearchIndex, np.ndarray], where: FilterGroup, expected: set[int]
) -> None:
    assert rows_of(indexed[0], where) == expected


@pytest.mark.parametrize(
    "condition",
    [Condition("colour", "contains", "r"), Condition("rank", "in", 3)],
    ids=["unknown-op", "in-without-list"],
)
def test_unsupported_filters_are_refused(
    indexed: tuple[SearchIndex, np.ndarray], condition: Condition
) -> None:
    with pytest.raises(UnsupportedFilter):
        indexed[0].mask(FilterGroup((condition,)))


def test_wrong_query_dimension_is_refused(indexed: tuple[SearchIndex, np.ndarray]) -> None:
    with pytest.raises(InvalidRequest, match="dimensions"):
        indexed[0].search(np.ones(7, dtype=np.float32), 3)


def test_top_k_above_candidates_returns_all_of_them(tmp_path: Path) -> None:
    artifact, _ = random_artifact(tmp_path, n=4, dim=8)
    assert len(SearchIndex(artifact).search(np.ones(8, dtype=np.float32), 50)) == 4
    assert (
        SearchIndex(artifact).search(
            np.ones(8, dtype=np.float32), 5, equality_filter({"colour": "nope"})
        )
        == []
    )


def test_concurrent_searches_are_batched_and_each_gets_its_own_answer(
    indexed: tuple[SearchIndex, np.ndarray],
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    index, vectors = indexed
    rng = np.random.default_rng(9)
    queries = rng.standard_normal((64, 48))
    filters = [equality_filter({"colour": "red"}) if i % 4 == 0 else None for i in range(64)]
    with ThreadPoolExecutor(16) as pool:
        results = list(
            pool.map(
                lambda i: index.search(queries[i].astype(np.float32), 7, filters[i]), range(64)
            )
        )
    for i, hits in enumerate(results):
        admitted = np.arange(len(vectors))[::3] if filters[i] else None
        assert [hit.row for hit in hits] == brute_force(vectors, queries[i], 7, admitted)


def test_a_closed_index_answers_in_the_callers_thread_and_is_freed(tmp_path: Path) -> None:
    artifact, _ = random_artifact(tmp_path, n=50, dim=8)
    index = SearchIndex(artifact)
    query = np.ones(8, dtype=np.float32)
    first = index.search(query, 3)
    index.close()
    searching = {t for t in threading.enumerate() if t.name == "search"}
    # A request that began before a hot reload still gets its answer...
    assert [hit.row for hit in index.search(query, 3)] == [hit.row for hit in first]
    # ...without a worker thread that would keep the old index (and its memory) alive.
    assert {t for t in threading.enumerate() if t.name == "search"} == searching
    index.close()
    gone = weakref.ref(index)
    del index
    assert gone() is None
