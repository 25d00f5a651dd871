"""Metadata filters mean what LlamaIndex means: the artifact store against ``SimpleVectorStore``
over the same nodes and vectors, by example, by property, and on a format 1 artifact."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
)

from functions.catalog import fetch_artifact, read_manifest
from functions.errors import InvalidRequest, UnsupportedFilter
from functions.filters import Condition, FilterGroup
from functions.search import SearchIndex
from functions.storage import LocalStore
from functions.vector_store import ArtifactVectorStore

from .filter_cases import Case, Pair, Query, ask, cases, compare, reference_store
from .test_artifact import publish_dir

EQ, NE, GT = FilterOperator.EQ, FilterOperator.NE, FilterOperator.GT
IN, NIN = FilterOperator.IN, FilterOperator.NIN
QUERY = [1.0, 0.0, 0.0]
# n0, n1 and n3 share a vector: their scores tie. The rest score lower, in id order.
NODES: list[tuple[str, str, dict[str, Any], list[int]]] = [
    (
        "n0",
        "d0",
        {"kind": "news", "rank": "c", "tags": ["x", "y"], "flag": True, "n": 1},
        [2, 1, 0],
    ),
    ("n1", "d0", {"kind": None, "rank": "c", "tags": ["y"], "flag": 1, "n": 1.0}, [2, 1, 0]),
    ("n2", "d1", {"rank": "a", "tags": [], "meta": {"x": 1}, "flag": False, "n": 0}, [1, 1, 0]),
    (
        "n3",
        "d1",
        {"kind": "blog", "rank": "c", "tags": "x y", "flag": 0, "title": "Hello"},
        [2, 1, 0],
    ),
    ("n4", "d2", {"kind": ["news"], "rank": "b", "title": "hello there"}, [1, 2, 0]),
]
ALL = ["n3", "n1", "n0", "n2", "n4"]  # best first; the tie ranked by node id, largest first


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with Pair(Case(NODES, [])) as pair:
        yield pair


def leaf(key: str, operator: FilterOperator, value: Any) -> MetadataFilter:
    try:
        return MetadataFilter(key=key, operator=operator, value=value)
    except ValueError:  # True: LlamaIndex refuses it; the HTTP API sends it
        return MetadataFilter.model_construct(key=key, operator=operator, value=value)


def both(pair: Pair, query: Query) -> tuple[str, str]:
    """What the artifact answered and whether the reference agrees."""
    return ",".join(ask(pair, query).ids or []), compare(pair, query)


def only(*filters: MetadataFilter | MetadataFilters, condition: Any = None) -> MetadataFilters:
    return MetadataFilters(filters=list(filters), condition=condition or FilterCondition.AND)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (only(leaf("missing", NE, "news")), ALL),
        (only(leaf("missing", NE, "news"), leaf("rank", EQ, "c")), ["n3", "n1", "n0"]),
        (only(leaf("kind", NE, "news")), ["n3", "n1", "n2", "n4"]),
        (only(leaf("kind", NIN, ["news"])), ["n3", "n1", "n2", "n4"]),
        (only(leaf("meta", NE, "x")), ALL),
        (only(leaf("tags", EQ, ["x", "y"])), ["n0"]),
        (only(leaf("kind", EQ, ["news"])), ["n4"]),
        (only(leaf("tags", FilterOperator.CONTAINS, "y")), ["n3", "n1", "n0"]),
        (only(leaf("tags", FilterOperator.ANY, ["x"])), ["n3", "n0"]),
        (only(leaf("tags", FilterOperator.ALL, ["x", "y"])), ["n3", "n0"]),
        (only(leaf("title", FilterOperator.TEXT_MATCH, "hello")), ["n4"]),
        (only(leaf("title", FilterOperator.TEXT_MATCH_INSENSITIVE, "hello")), ["n3", "n4"]),
        (only(leaf("tags", FilterOperator.IS_EMPTY, None)), ["n2", "n4"]),
        (only(leaf("kind", FilterOperator.IS_EMPTY, None)), ["n1", "n2"]),
        (only(leaf("kind", EQ, "news"), condition=FilterCondition.NOT), ["n3", "n1", "n2", "n4"]),
        (
            only(
                leaf("rank", EQ, "c"),
                only(leaf("kind", EQ, "news"), leaf("tags", IN, ["y"]), condition="not"),
            ),
            ["n3", "n1"],
        ),
        (
            only(
                only(leaf("rank", EQ, "a"), leaf("kind", EQ, "blog"), condition="or"),
                leaf("n", NE, 5),
            ),
            ["n3", "n2"],
        ),
        (only(leaf("flag", EQ, 1)), ["n1", "n0"]),
        (only(leaf("flag", EQ, True)), ["n1", "n0"]),
        (only(leaf("flag", IN, [0])), ["n3", "n2"]),
        (only(leaf("n", EQ, 1)), ["n1", "n0"]),
        (only(leaf("doc_id", EQ, "d1")), ["n3", "n2"]),
        (only(leaf("_node_type", EQ, "TextNode")), ALL),
    ],
    ids=[
        "ne-missing-key",
        "and-ne-missing-key",
        "ne-none-list",
        "nin-none-list",
        "ne-dict",
        "eq-list",
        "eq-list-on-list-and-scalars",
        "contains",
        "any",
        "all",
        "text-match",
        "text-match-insensitive",
        "is-empty-list",
        "is-empty-none",
        "not",
        "nested-not",
        "nested-or",
        "int-matches-true",
        "true-matches-1",
        "false-in-0",
        "float-1-is-int-1",
        "llamaindex-doc-id",
        "llamaindex-node-type",
    ],
)
def test_filters_answer_as_llamaindex(
    pair: Pair, filters: MetadataFilters, expected: list[str]
) -> None:
    assert both(pair, Query(QUERY, 10, filters, None, None)) == (",".join(expected), "agree")


@pytest.mark.parametrize(
    ("node_ids", "doc_ids", "top_k", "expected"),
    [
        (["n0", "n4", "unknown"], None, 10, ["n0", "n4"]),
        (None, ["d1"], 10, ["n3", "n2"]),
        (["n0", "n3"], ["d0"], 10, ["n0"]),
        (None, None, 2, ["n3", "n1"]),
        (None, None, 1, ["n3"]),
    ],
    ids=["node-ids", "doc-ids", "both", "tie-at-the-cut", "top-1-of-a-tie"],
)
def test_restrictions_and_ties_answer_as_llamaindex(
    pair: Pair,
    node_ids: list[str] | None,
    doc_ids: list[str] | None,
    top_k: int,
    expected: list[str],
) -> None:
    query = Query(QUERY, top_k, None, node_ids, doc_ids)
    assert both(pair, query) == (",".join(expected), "agree")


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        (only(leaf("rank", GT, 1)), r"'rank' > 1 cannot be evaluated on the value 'c'"),
        (
            only(leaf("title", FilterOperator.TEXT_MATCH, 3)),
            r"'title' text_match 3 cannot be evaluated .* TypeError",
        ),
        (
            only(leaf("kind", NE, "x"), leaf("kind", FilterOperator.CONTAINS, 1), condition="or"),
            r"'kind' contains 1 cannot be evaluated on the value 'news'",
        ),
    ],
    ids=["text-gt-number", "text-match-number", "number-in-text-under-or"],
)
def test_what_llamaindex_cannot_evaluate_is_refused_naming_the_operator(
    pair: Pair, filters: MetadataFilters, message: str
) -> None:
    with pytest.raises(UnsupportedFilter, match=message):
        pair.store.query(
            VectorStoreQuery(query_embedding=QUERY, similarity_top_k=3, filters=filters)
        )
    assert compare(pair, Query(QUERY, 3, filters, None, None)) == "agree"


def test_a_condition_is_refused_only_where_it_is_evaluated(pair: Pair) -> None:
    """LlamaIndex evaluates filters only on the nodes ``node_ids`` lets through."""
    filters = only(leaf("rank", GT, 1))
    assert both(pair, Query(QUERY, 5, filters, ["unknown"], None)) == ("", "agree")


@pytest.mark.parametrize(
    ("vector", "top_k", "message"),
    [
        ([0.0, 0.0, 0.0], 3, "zero or not finite"),
        ([1.0, float("nan"), 0.0], 3, "zero or not finite"),
        (QUERY, 0, "top_k must be at least 1, not 0"),
        (QUERY, -1, "top_k must be at least 1, not -1"),
    ],
    ids=["zero-vector", "nan-vector", "top-k-0", "top-k-negative"],
)
def test_queries_without_a_meaning_are_refused(
    pair: Pair, vector: list[float], top_k: int, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message) as caught:
        pair.store.query(VectorStoreQuery(query_embedding=vector, similarity_top_k=top_k))
    assert type(caught.value) is InvalidRequest


def test_an_empty_node_ids_list_restricts_nothing(pair: Pair) -> None:
    """LlamaIndex's retriever sends ``node_ids=[]`` to stores that keep their text."""
    result = pair.store.query(
        VectorStoreQuery(query_embedding=QUERY, similarity_top_k=9, node_ids=[])
    )
    assert result.ids == ALL


def test_where_is_anded_with_the_querys_filters(pair: Pair) -> None:
    result = pair.store.query(
        VectorStoreQuery(
            query_embedding=QUERY, similarity_top_k=9, filters=only(leaf("rank", EQ, "c"))
        ),
        where=FilterGroup((Condition("flag", "==", True),)),
    )
    assert result.ids == ["n1", "n0"]


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_the_artifact_store_agrees_with_simple_vector_store(case: Case) -> None:
    with Pair(case) as pair:
        assert [compare(pair, query) for query in case.queries] == ["agree"] * len(case.queries)


# An artifact written by the format 1 writer (git 0a6a069, before list-valued filters): its
# columns keep scalars only; code -1 is a missing key, null, a list or an object alike.
FORMAT_1 = Path(__file__).parent / "data" / "format1"


@pytest.fixture(scope="module")
def format_1(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ArtifactVectorStore, Any]]:
    """The format 1 artifact published to a store, fetched and verified as the function does."""
    store = LocalStore(tmp_path_factory.mktemp("store"))
    publish_dir(FORMAT_1, store)
    manifest = read_manifest(store, "stable")
    artifact = fetch_artifact(store, manifest, tmp_path_factory.mktemp("cache"))
    assert (manifest.format_version, artifact.complete_columns) == (1, False)
    index = SearchIndex(artifact)
    records = [artifact.record(row) for row in range(len(artifact))]
    yield ArtifactVectorStore(index), reference_store(records, np.asarray(artifact.vectors))
    index.close()


@pytest.mark.parametrize(
    "filters",
    [
        only(leaf("kind", EQ, "news")),
        only(leaf("kind", NE, "news")),
        only(leaf("kind", NIN, ["news", "blog"])),
        only(leaf("missing", NE, "x")),
        only(leaf("flag", EQ, 1)),
        only(leaf("rank", GT, 1)),
        only(leaf("rank", IN, [2, 3]), leaf("kind", NE, "blog"), condition="or"),
    ],
    ids=["eq", "ne-none-list", "nin", "ne-missing", "bool-int", "gt-on-a-full-key", "or"],
)
def test_a_format_1_artifact_answers_what_its_columns_determine(
    format_1: tuple[ArtifactVectorStore, Any], filters: MetadataFilters
) -> None:
    store, reference = format_1
    query = VectorStoreQuery(query_embedding=[1.0, 0.2, 0.1], similarity_top_k=6, filters=filters)
    assert store.query(query).ids == reference.query(query).ids


@pytest.mark.parametrize(
    "filters",
    [
        only(leaf("tags", FilterOperator.CONTAINS, "x")),
        only(leaf("tags", EQ, ["x", "y"])),
        only(leaf("kind", FilterOperator.IS_EMPTY, None)),
        only(leaf("flag", GT, 0)),
        only(leaf("kind", EQ, "news"), leaf("meta", FilterOperator.ANY, ["x"])),
    ],
    ids=["contains", "eq-list", "is-empty", "gt-with-missing-rows", "any-on-an-object"],
)
def test_a_format_1_artifact_refuses_what_its_columns_cannot_tell(
    format_1: tuple[ArtifactVectorStore, Any], filters: MetadataFilters
) -> None:
    store, _ = format_1
    query = VectorStoreQuery(query_embedding=[1.0, 0.2, 0.1], similarity_top_k=6, filters=filters)
    with pytest.raises(UnsupportedFilter, match=r"is in format 1, .* rebuild the index"):
        store.query(query)
