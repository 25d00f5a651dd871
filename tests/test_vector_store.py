from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.schema import NodeRelationship, QueryBundle, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from functions.engine import EmbedderAdapter
from functions.errors import InvalidRequest, UnsupportedFilter
from functions.search import SearchIndex
from functions.vector_store import ArtifactVectorStore

from .artifacts import random_artifact


class TableEmbedder:
    """A test embedder that looks queries up in a table (the vectors here are random)."""

    provider = "test"
    model = "model"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        return np.stack([self.table[t] for t in texts]).astype(np.float32)

    def embed_query(self, text: str) -> np.ndarray:
        return self.table[text].astype(np.float32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[ArtifactVectorStore, np.ndarray]:
    artifact, vectors = random_artifact(tmp_path_factory.mktemp("vs"), n=3000, dim=32)
    return ArtifactVectorStore(SearchIndex(artifact)), vectors


def reference(vectors: np.ndarray, query: np.ndarray, k: int, admit: object = None) -> list[str]:
    rows = [i for i in range(len(vectors)) if admit is None or admit(i)]  # type: ignore[operator]
    scores = vectors[rows] @ (query / np.linalg.norm(query))
    return [f"doc-{rows[i] // 5}#{rows[i] % 5}" for i in np.argsort(-scores)[:k]]


def test_retriever_matches_float64_brute_force(
    setup: tuple[ArtifactVectorStore, np.ndarray],
) -> None:
    store, vectors = setup
    rng = np.random.default_rng(11)
    queries = {f"q{i}": rng.standard_normal(32) for i in range(10)}
    index = VectorStoreIndex.from_vector_store(
        store, embed_model=EmbedderAdapter(TableEmbedder(queries))
    )
    retriever = index.as_retriever(similarity_top_k=10)
    for text, query in queries.items():
        nodes = retriever.retrieve(text)
        assert [n.node.node_id for n in nodes] == reference(vectors, query, 10)
        assert isinstance(nodes[0].node, TextNode)
        assert (
            nodes[0].node.relationships[NodeRelationship.SOURCE].node_id
            == nodes[0].node.node_id.split("#")[0]
        )


def test_metadata_filters_are_applied(setup: tuple[ArtifactVectorStore, np.ndarray]) -> None:
    store, vectors = setup
    query = np.random.default_rng(12).standard_normal(32)
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="colour", value="green"),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="rank", value=2, operator=FilterOperator.LTE),
                    MetadataFilter(key="rank", value=[8, 9], operator=FilterOperator.IN),
                ],
                condition=FilterCondition.OR,
            ),
        ]
    )
    result = store.query(
        VectorStoreQuery(query_embedding=list(query), similarity_top_k=8, filters=filters)
    )
    assert result.ids == reference(
        vectors, query, 8, lambda i: i % 3 == 1 and (i % 10 <= 2 or i % 10 >= 8)
    )
    assert result.similarities is not None
    assert result.similarities == sorted(result.similarities, reverse=True)


def test_query_engine_retrieves_with_a_precomputed_embedding(
    setup: tuple[ArtifactVectorStore, np.ndarray],
) -> None:
    store, vectors = setup
    query = np.random.default_rng(13).standard_normal(32)
    index = VectorStoreIndex.from_vector_store(
        store, embed_model=EmbedderAdapter(TableEmbedder({}))
    )
    nodes = index.as_retriever(similarity_top_k=3).retrieve(
        QueryBundle("anything", embedding=list(query))
    )
    assert [n.node.node_id for n in nodes] == reference(vectors, query, 3)


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (VectorStoreQuery(query_embedding=None), InvalidRequest),
        (
            VectorStoreQuery(query_embedding=[1.0] * 32, mode=VectorStoreQueryMode.SPARSE),
            InvalidRequest,
        ),
        (VectorStoreQuery(query_embedding=[0.0] * 32), InvalidRequest),
        (VectorStoreQuery(query_embedding=[1.0] * 32, similarity_top_k=0), InvalidRequest),
        (
            VectorStoreQuery(
                query_embedding=[1.0] * 32,
                filters=MetadataFilters(
                    filters=[MetadataFilter(key="colour", value=3, operator=FilterOperator.GT)]
                ),
            ),
            UnsupportedFilter,
        ),
    ],
    ids=["no-embedding", "sparse", "zero-vector", "top-k-0", "text-greater-than-number"],
)
def test_unsupported_queries_are_refused(
    setup: tuple[ArtifactVectorStore, np.ndarray], query: VectorStoreQuery, error: type
) -> None:
    with pytest.raises(error):
        setup[0].query(query)


def test_not_doc_ids_and_text_match_are_applied(
    setup: tuple[ArtifactVectorStore, np.ndarray],
) -> None:
    store, vectors = setup
    query = np.random.default_rng(14).standard_normal(32)
    result = store.query(
        VectorStoreQuery(
            query_embedding=list(query),
            similarity_top_k=5,
            doc_ids=["doc-1", "doc-7", "doc-8"],
            filters=MetadataFilters(
                filters=[
                    MetadataFilter(key="colour", value="re", operator=FilterOperator.TEXT_MATCH),
                    MetadataFilter(key="tags", value="list", operator=FilterOperator.CONTAINS),
                ],
                condition=FilterCondition.NOT,
            ),
        )
    )
    # not red, not green (both contain "re"), and every chunk has the tag: nothing passes NOT.
    assert result.ids == []
    result = store.query(
        VectorStoreQuery(
            query_embedding=list(query),
            similarity_top_k=5,
            doc_ids=["doc-1", "doc-7", "doc-8"],
            filters=MetadataFilters(
                filters=[
                    MetadataFilter(key="colour", value="re", operator=FilterOperator.TEXT_MATCH)
                ],
                condition=FilterCondition.NOT,
            ),
        )
    )
    assert result.ids == reference(vectors, query, 5, lambda i: i // 5 in (1, 7, 8) and i % 3 == 2)


def test_store_is_read_only(setup: tuple[ArtifactVectorStore, np.ndarray]) -> None:
    store, _ = setup
    with pytest.raises(InvalidRequest, match="read-only"):
        store.add([TextNode(text="x")])
    with pytest.raises(InvalidRequest, match="read-only"):
        store.delete("doc-1")
