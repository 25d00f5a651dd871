"""Differential cases: the artifact store against LlamaIndex's ``SimpleVectorStore``.

A case is a few nodes (mixed metadata: strings, ints, floats, booleans, lists, objects, null,
missing keys, LlamaIndex's own ``doc_id``; a small pool of vectors, so that scores tie) and a few
queries (a filter tree over every operator and condition, nested; top k; node and document ids).
The artifact is written by the real writer; the reference is a ``SimpleVectorStore`` over the same
nodes and the same stored vectors. ``compare`` says whether one query's answers agree:

- the same ids in the same order, scores within 1e-5, after ordering each run of equal reference
  scores by node id, largest first (LlamaIndex keeps the largest (score, id) pairs, in its heap's
  array order; the artifact ranks them by id: see ``functions.search``);
- or LlamaIndex raises and the artifact refuses with ``UnsupportedFilter`` naming the key and
  operator of a condition that raises there;
- or the query is one the artifact refuses by rule (top k below 1, a zero query vector) with
  ``InvalidRequest``.

Nested groups: ``SimpleVectorStore`` raises for any nesting; the reference for a nested tree is
LlamaIndex's own evaluation of each leaf on the metadata it stores, composed by the group's
condition, then ``SimpleVectorStore`` ranking the admitted nodes. For flat trees it is
``SimpleVectorStore.query`` itself.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn
from pydantic import ValidationError

from functions.artifact import (
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.embeddings import normalize
from functions.errors import InvalidRequest, UnsupportedFilter
from functions.search import SearchIndex
from functions.vector_store import ArtifactVectorStore

from .artifacts import open_dir

DIM = 3
METADATA_KEYS = ["a", "b", "tags", "doc_id", "_node_type"]
FILTER_KEYS = [*METADATA_KEYS, "missing", "ref_doc_id", "_node_content"]
DOCS = ["d0", "d1", ""]

_word = st.text(alphabet="abAB", max_size=2)
_scalar = st.one_of(
    st.none(),
    _word,
    st.integers(-2, 2),
    st.floats(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, math.nan, math.inf]),
    st.booleans(),
)
_value = st.one_of(
    _scalar,
    st.lists(_scalar, max_size=3),
    st.dictionaries(_word, _scalar, max_size=2),
)
_filter_value = st.one_of(
    st.none(),
    st.integers(-2, 2),
    st.floats(-2, 2),
    _word,
    st.booleans(),
    st.lists(_word, max_size=3),
    st.lists(st.integers(-2, 2), max_size=3),
    st.lists(st.floats(-2, 2), max_size=3),
    st.lists(st.booleans(), max_size=2),
)


def _leaf(key: str, operator: FilterOperator, value: Any) -> MetadataFilter:
    try:
        return MetadataFilter(key=key, operator=operator, value=value)
    except ValidationError:  # True, [True]: LlamaIndex refuses them; the HTTP API sends them
        return MetadataFilter.model_construct(key=key, operator=operator, value=value)


leaves = st.builds(
    _leaf, st.sampled_from(FILTER_KEYS), st.sampled_from(list(FilterOperator)), _filter_value
)
_conditions = st.sampled_from([*FilterCondition, None])
filter_trees = st.one_of(
    st.builds(lambda leaf: MetadataFilters(filters=[leaf]), leaves),
    st.builds(MetadataFilters, filters=st.lists(leaves, max_size=3), condition=_conditions),
    st.recursive(
        st.builds(MetadataFilters, filters=st.lists(leaves, max_size=3), condition=_conditions),
        lambda children: st.builds(
            MetadataFilters,
            filters=st.lists(st.one_of(leaves, children), max_size=3),
            condition=_conditions,
        ),
        max_leaves=6,
    ),
)


@dataclass(frozen=True)
class Query:
    """One query of a case."""

    vector: list[float]
    top_k: int
    filters: MetadataFilters | None
    node_ids: list[str] | None
    doc_ids: list[str] | None


@dataclass(frozen=True)
class Case:
    """Nodes (id, document id, metadata, vector) and the queries put to both stores."""

    nodes: list[tuple[str, str, dict[str, Any], list[int]]]
    queries: list[Query]


@st.composite
def cases(draw: st.DrawFn, max_nodes: int = 8, max_queries: int = 3) -> Case:
    """A random case: up to ``max_nodes`` nodes, 1 to ``max_queries`` queries."""
    name = st.text(alphabet="xyz", min_size=1, max_size=2)
    ids = draw(
        st.lists(name, unique=True, min_size=int(draw(st.integers(0, 9)) > 0), max_size=max_nodes)
    )
    component = st.integers(-2, 2)
    pool = draw(
        st.lists(
            st.lists(component, min_size=DIM, max_size=DIM).filter(any), min_size=1, max_size=4
        )
    )
    nodes = [
        (
            node,
            draw(st.sampled_from(DOCS)),
            draw(st.dictionaries(st.sampled_from(METADATA_KEYS), _value, max_size=4)),
            draw(st.sampled_from(pool)),
        )
        for node in ids
    ]
    some_ids = st.lists(st.sampled_from([*ids, "unknown"]), min_size=1, max_size=3)
    some_docs = st.lists(st.sampled_from(["d0", "d1", "None", "", "dx"]), min_size=1, max_size=2)
    vectors = st.lists(component.map(float), min_size=DIM, max_size=DIM).filter(any)
    # Now and then a query the artifact refuses: top k 0 or -1, a zero vector.
    top_k = st.integers(0, 15).flatmap(
        lambda dice: st.integers(-1, 0) if dice == 7 else st.integers(1, len(nodes) + 2)
    )
    queries = draw(
        st.lists(
            st.builds(
                Query,
                vector=st.integers(0, 15).flatmap(
                    lambda dice: st.just([0.0] * DIM) if dice == 7 else vectors
                ),
                top_k=top_k,
                filters=st.one_of(st.none(), filter_trees, filter_trees),
                node_ids=st.one_of(st.none(), st.none(), some_ids),
                doc_ids=st.one_of(st.none(), st.none(), some_docs),
            ),
            min_size=1,
            max_size=max_queries,
        )
    )
    return Case(nodes, queries)


class Pair:
    """The artifact store and the reference over one case's nodes (a context manager)."""

    def __init__(self, case: Case) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="filters-")
        records = [
            NodeRecord(node, doc, f"text of {node}", meta) for node, doc, meta, _ in case.nodes
        ]
        vectors = normalize(
            np.array([v for *_, v in case.nodes], dtype=np.float32).reshape(-1, DIM)
        )
        manifest = write_artifact(
            Path(self._dir.name),
            vectors=vectors,
            records=records,
            hashes=[content_hash("m", r.text) for r in records],
            embedding=EmbeddingSpec(provider="test", model="m", dim=DIM),
            chunking=ChunkingSpec(chunk_size=64, chunk_overlap=0),
            counts=Counts(documents=3, chunks=len(records), embedded=len(records), reused=0),
            probe=Probe(text="p", vector=[1.0] + [0.0] * (DIM - 1)),
            created_at=datetime(2026, 12, 1, tzinfo=UTC),
            builder_version="test",
        )
        self.index = SearchIndex(open_dir(Path(self._dir.name), manifest))
        self.store = ArtifactVectorStore(self.index)
        self.reference = reference_store(records, self.index.vectors)

    def __enter__(self) -> Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.index.close()
        self._dir.cleanup()


def reference_store(records: list[NodeRecord], vectors: np.ndarray) -> SimpleVectorStore:
    """A ``SimpleVectorStore`` over the records as nodes, with the vectors the artifact stores."""
    store = SimpleVectorStore()
    store.add(
        [
            TextNode(
                id_=r.id,
                text=r.text,
                metadata=r.metadata,
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=r.doc_id)},
                embedding=[float(x) for x in vectors[row]],
            )
            for row, r in enumerate(records)
        ]
    )
    return store


def _nested(filters: MetadataFilters | None) -> bool:
    return filters is not None and any(isinstance(f, MetadataFilters) for f in filters.filters)


def _admits(filters: MetadataFilters, metadata: dict[str, Any]) -> bool:
    """LlamaIndex's verdict on a node, each group as it judges a flat one; every leaf evaluated
    (it raises where LlamaIndex would)."""
    verdicts = [
        _admits(item, metadata)
        if isinstance(item, MetadataFilters)
        else build_metadata_filter_fn(lambda _: metadata, MetadataFilters(filters=[item]))("")
        for item in filters.filters
    ]
    if not verdicts:
        return True
    if filters.condition == FilterCondition.OR:
        return any(verdicts)
    if filters.condition == FilterCondition.NOT:
        return not any(verdicts)
    return all(verdicts)


def _raising(filters: MetadataFilters, metadata: dict[str, Any]) -> set[tuple[str, str]]:
    """(key, operator) of the leaves LlamaIndex cannot evaluate on this node's metadata."""
    found: set[tuple[str, str]] = set()
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            found |= _raising(item, metadata)
            continue
        try:
            build_metadata_filter_fn(lambda _: metadata, MetadataFilters(filters=[item]))("")
        except Exception:
            found.add((item.key, item.operator.value))
    return found


@dataclass(frozen=True)
class Outcome:
    """What a store answered: ids and scores, or the error it raised."""

    ids: list[str] | None = None
    scores: list[float] | None = None
    error: Exception | None = None
    raising: frozenset[tuple[str, str]] = frozenset()


def expected(pair: Pair, query: Query) -> Outcome:
    """The reference's answer, ties ordered by node id (largest first)."""
    if query.top_k < 1 or not any(query.vector):
        return Outcome(error=InvalidRequest("refused by rule"))
    metadata = pair.reference.data.metadata_dict
    candidates = list(metadata)
    if query.node_ids is not None:
        candidates = [node for node in candidates if node in set(query.node_ids)]
    if query.doc_ids is not None:
        candidates = [node for node in candidates if metadata[node]["doc_id"] in query.doc_ids]
    restricted = query.node_ids is not None or query.doc_ids is not None
    filters = query.filters
    try:
        if _nested(filters):
            assert filters is not None
            candidates = [node for node in candidates if _admits(filters, metadata[node])]
            restricted, filters = True, None
        result = pair.reference.query(
            VectorStoreQuery(
                query_embedding=query.vector,
                similarity_top_k=query.top_k,
                node_ids=candidates if restricted else None,
                filters=filters,
            )
        )
    except Exception as exc:
        assert query.filters is not None
        raising = frozenset(
            found for node in candidates for found in _raising(query.filters, metadata[node])
        )
        return Outcome(error=exc, raising=raising)
    scores = [float(s) for s in result.similarities or []]
    ranked = sorted(
        zip(scores, result.ids or [], strict=True), key=lambda p: (p[0], p[1]), reverse=True
    )
    # Only the order within runs of equal scores changes: the runs are where they were.
    assert [s for s, _ in ranked] == scores
    return Outcome([node for _, node in ranked], [s for s, _ in ranked])


def ask(pair: Pair, query: Query) -> VectorStoreQueryResult:
    """Put ``query`` to the artifact store."""
    return pair.store.query(
        VectorStoreQuery(
            query_embedding=query.vector,
            similarity_top_k=query.top_k,
            filters=query.filters,
            node_ids=query.node_ids,
            doc_ids=query.doc_ids,
        )
    )


def actual(pair: Pair, query: Query) -> Outcome:
    """The artifact store's answer."""
    try:
        result = ask(pair, query)
    except InvalidRequest as exc:
        return Outcome(error=exc)
    return Outcome(result.ids, result.similarities)


def compare(pair: Pair, query: Query) -> str:
    """``agree`` or what differs: one word, for counting."""
    return judge(pair, query)[0]


def judge(pair: Pair, query: Query) -> tuple[str, str]:
    """``compare``'s verdict, and what kind of answer the reference gave (for the figures)."""
    want, got = expected(pair, query), actual(pair, query)
    if want.error is not None:
        kind = "refused-by-rule" if isinstance(want.error, InvalidRequest) else "reference-raises"
        if got.error is None:
            return "answered-where-reference-raises", kind
        if isinstance(want.error, InvalidRequest):
            return ("agree" if type(got.error) is InvalidRequest else "wrong-error"), kind
        if not isinstance(got.error, UnsupportedFilter):
            return "wrong-error", kind
        named = any(f"{key!r} {op} " in got.error.message for key, op in want.raising)
        return ("agree" if named else "refusal-names-no-raising-operator"), kind
    assert want.ids is not None
    assert want.scores is not None
    tied = len(set(want.scores)) < len(want.scores)
    kind = "empty" if not want.ids else "ranked-with-ties" if tied else "ranked"
    if got.error is not None:
        return "refused-where-reference-answers", kind
    if got.ids != want.ids:
        return "different-ids", kind
    assert got.scores is not None
    if not np.allclose(got.scores, want.scores, rtol=0, atol=1e-5):
        return "different-scores", kind
    return "agree", kind
