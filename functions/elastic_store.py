"""LlamaIndex's ``ElasticsearchStore``, serving a published index as the artifact's store does.

The stock store is used as it is for what it does well (its async client, its dense and hybrid
strategies, turning hits back into nodes); four things are changed, each because the artifact
backend answers otherwise and answers must not depend on the backend:

- similarities are cosine similarities: the stock store rescales each result's scores to 0..1
  by their min and max; here a dense hit's score (``(1 + cos) / 2`` for both ``dot_product`` and
  ``cosine`` mappings) is turned back into its cosine (hybrid scores, kNN plus BM25, are given as
  Elasticsearch's);
- filters are the artifact's (``MetadataFilters`` of every operator, nested, and the ``where``
  the HTTP API passes through ``vector_store_kwargs``), translated exactly by ``es_filters`` or
  refused (``UnsupportedFilter``); the stock store reads only equality filters;
- ``num_candidates`` is the configured one (``RAG_ELASTICSEARCH_NUM_CANDIDATES``), not ten
  times k, and queries are refused as the artifact refuses them (a top k below 1, a zero
  vector, the wrong dimension);
- the sync ``query`` runs on the backend's one event loop (``run``) instead of the caller's; the
  index is read-only.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Coroutine, Sequence
from typing import Any

import numpy as np
from elasticsearch import NotFoundError
from elasticsearch.helpers.vectorstore import AsyncDenseVectorStrategy, DistanceMetric
from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.vector_stores.elasticsearch import ElasticsearchStore
from llama_index.vector_stores.elasticsearch.utils import convert_es_hit_to_node
from pydantic import PrivateAttr

from .errors import ElasticsearchError, ElasticsearchUnavailable, InvalidRequest
from .es_filters import es_filter as es_filter_clauses
from .filters import FilterGroup
from .vector_store import translate_filters

__all__ = ["ServingStore"]

Run = Callable[[Coroutine[Any, Any, Any], str], Any]
_TEXT, _VECTOR = "content", "embedding"  # index_builder.elastic_layout's fields


class ServingStore(ElasticsearchStore):
    """A published index in Elasticsearch, read-only, answering as ``ArtifactVectorStore``."""

    _run: Run = PrivateAttr()
    _facts: dict[str, dict[str, Any]] | None = PrivateAttr()
    _dim: int = PrivateAttr()
    _num_candidates: int = PrivateAttr()
    _hybrid: bool = PrivateAttr()

    def __init__(
        self,
        index: str,
        client: Any,
        *,
        run: Run,
        facts: dict[str, dict[str, Any]] | None,
        dim: int,
        num_candidates: int = 1000,
        hybrid: bool = False,
    ) -> None:
        super().__init__(
            index_name=index,
            es_client=client,
            text_field=_TEXT,
            vector_field=_VECTOR,
            distance_strategy="DOT_PRODUCT",
            # Hybrid without RRF: kNN and a BM25 match in one search, scores added. RRF needs a
            # licence the basic one does not give.
            retrieval_strategy=AsyncDenseVectorStrategy(
                distance=DistanceMetric.DOT_PRODUCT, hybrid=hybrid, rrf=False, text_field=_TEXT
            ),
        )
        self._run, self._facts, self._dim = run, facts, dim
        self._num_candidates, self._hybrid = num_candidates, hybrid

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this store."""
        return "ServingElasticsearchStore"

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable; build a new one with the index builder."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def clear(self) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def query(
        self,
        query: VectorStoreQuery,
        custom_query: Any = None,
        es_filter: Any = None,
        metadata_keyword_suffix: str = ".keyword",
        *,
        where: FilterGroup | None = None,
        **kwargs: Any,
    ) -> VectorStoreQueryResult:
        """``aquery`` on the backend's event loop, within its timeout."""
        try:
            result: VectorStoreQueryResult = self._run(
                self.aquery(query, custom_query, es_filter, where=where),
                f"search {self.index_name}",
            )
        except ElasticsearchError as exc:
            if isinstance(exc.__cause__, NotFoundError):  # deleted under a serving function
                raise ElasticsearchUnavailable(
                    f"{self.index_name} is gone from Elasticsearch: {exc.message}",
                    public="the index is gone from Elasticsearch",
                ) from exc
            raise
        return result

    def run_query(
        self,
        vector: list[float],
        top_k: int,
        where: FilterGroup | None,
        *,
        text: str | None = None,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> VectorStoreQueryResult:
        """A query from plain values (retrieve mode, the extractive answer)."""
        query = VectorStoreQuery(
            query_embedding=vector,
            similarity_top_k=top_k,
            query_str=text,
            node_ids=list(node_ids) if node_ids is not None else None,
            doc_ids=list(doc_ids) if doc_ids is not None else None,
        )
        return self.query(query, where=where)

    async def aquery(
        self,
        query: VectorStoreQuery,
        custom_query: Any = None,
        es_filter: Any = None,
        metadata_keyword_suffix: str = ".keyword",
        *,
        where: FilterGroup | None = None,
        **kwargs: Any,
    ) -> VectorStoreQueryResult:
        """Top k by kNN (plus BM25 with hybrid retrieval) among the chunks the query's filters,
        ``where``, node ids and document ids admit; scores are cosine similarities (dense)."""
        if custom_query is not None or es_filter is not None:
            raise InvalidRequest("custom queries and raw Elasticsearch filters are not served")
        if query.query_embedding is None:
            raise InvalidRequest("the Elasticsearch store needs a query embedding")
        if query.mode not in (VectorStoreQueryMode.DEFAULT, VectorStoreQueryMode.HYBRID):
            raise InvalidRequest(f"query mode {query.mode.value!r} is not supported")
        if query.mode == VectorStoreQueryMode.HYBRID and not self._hybrid:
            raise InvalidRequest("hybrid queries need RAG_RETRIEVAL=hybrid")
        if self._hybrid and not query.query_str:
            raise InvalidRequest("hybrid retrieval needs the question's text")
        vector = np.asarray(query.query_embedding, dtype=np.float64).reshape(-1)
        top_k = query.similarity_top_k
        _check(vector, self._dim, top_k)
        group = translate_filters(query.filters)
        if group is not None and where is not None:
            group = FilterGroup((group, where))
        clauses = es_filter_clauses(
            where if group is None else group,
            self._facts,
            node_ids=query.node_ids or None,
            doc_ids=query.doc_ids or None,
        )
        # dot_product needs unit-length query vectors; the cosine is the same for any length.
        unit = (vector / np.linalg.norm(vector)).astype(np.float32).tolist()
        hits = await self._store.search(
            query=query.query_str if self._hybrid else None,
            query_vector=unit,
            k=top_k,
            num_candidates=max(self._num_candidates, top_k),
            filter=clauses,
        )
        nodes = [convert_es_hit_to_node(hit, self.text_field) for hit in hits]
        scores = [float(hit["_score"]) for hit in hits]
        return VectorStoreQueryResult(
            nodes=nodes,
            similarities=scores if self._hybrid else [2.0 * score - 1.0 for score in scores],
            ids=[str(hit["_id"]) for hit in hits],
        )


def _check(vector: np.ndarray[Any, Any], dim: int, top_k: int) -> None:
    """Refuse what the artifact's search refuses: a wrong dimension, a zero or non-finite
    vector, a top k below 1."""
    if vector.shape[0] != dim:
        raise InvalidRequest(f"query vector has {vector.shape[0]} dimensions, the index {dim}")
    norm = float(np.linalg.norm(vector)) if np.isfinite(vector).all() else np.inf
    if not 0 < norm < np.inf:
        raise InvalidRequest(
            "the query vector is zero or not finite: its cosine similarity is undefined"
        )
    if isinstance(top_k, bool) or top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1, not {top_k!r}")
