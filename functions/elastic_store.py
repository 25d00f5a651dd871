"""LlamaIndex's ``ElasticsearchStore``, serving a published index as the artifact's store does.

The stock store is used for what it does well (its async client's ``AsyncVectorStore``, turning
hits back into nodes); four things are changed, each because the artifact backend answers
otherwise and answers must not depend on the backend:

- similarities are cosine similarities: the stock store rescales each result's scores to 0..1
  by their min and max; here a dense hit's score is turned back into its cosine (``Knn``);
- filters are the artifact's (``MetadataFilters`` of every operator, nested, and the ``where``
  the HTTP API passes through ``vector_store_kwargs``), translated exactly by ``es_filters`` or
  refused (``UnsupportedFilter``); the stock store reads only equality filters;
- ``num_candidates`` is the configured one (``RAG_ELASTICSEARCH_NUM_CANDIDATES``), not ten
  times k, and queries are refused as the artifact refuses them;
- the sync ``query`` runs on the backend's one event loop instead of the caller's; the index is
  read-only.

The requests are the ones retrieve mode makes (``ElasticsearchSearcher.search``): one ``Knn``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from llama_index.core.schema import BaseNode
from llama_index.core.vector_stores.types import (
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.vector_stores.elasticsearch import ElasticsearchStore
from llama_index.vector_stores.elasticsearch.utils import convert_es_hit_to_node
from pydantic import PrivateAttr

from .elastic_search import TEXT, VECTOR, ElasticsearchSearcher, vector_store
from .errors import InvalidRequest
from .filters import FilterGroup
from .vector_store import translate_filters

__all__ = ["ServingStore"]

_READ_ONLY = "a published index is read-only; build a new index instead"


class ServingStore(ElasticsearchStore):
    """A published index in Elasticsearch, read-only, answering as ``ArtifactVectorStore``."""

    _searcher: ElasticsearchSearcher = PrivateAttr()

    def __init__(self, index: str, client: Any, *, searcher: ElasticsearchSearcher) -> None:
        super().__init__(
            index_name=index,
            es_client=client,
            text_field=TEXT,
            vector_field=VECTOR,
            distance_strategy="DOT_PRODUCT",
            retrieval_strategy=vector_store(client, index, searcher.knn.hybrid).retrieval_strategy,
        )
        self._searcher = searcher

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this store."""
        return "ServingElasticsearchStore"

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable; build a new one with the index builder."""
        raise InvalidRequest(_READ_ONLY)

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

    def clear(self) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

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
        result: VectorStoreQueryResult = self._searcher.searched(
            self.aquery(query, custom_query, es_filter, where=where)
        )
        return result

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
        knn = self._searcher.knn
        if query.mode == VectorStoreQueryMode.HYBRID and not knn.hybrid:
            raise InvalidRequest("hybrid queries need RAG_RETRIEVAL=hybrid")
        group = translate_filters(query.filters)
        if group is not None and where is not None:
            group = FilterGroup((group, where))
        request = knn.request(
            query.query_embedding,
            query.similarity_top_k,
            where if group is None else group,
            text=query.query_str,
            node_ids=query.node_ids or None,  # LlamaIndex sends [] for "none given"
            doc_ids=query.doc_ids or None,
        )
        hits = await self._store.search(**request)
        return VectorStoreQueryResult(
            nodes=[convert_es_hit_to_node(hit, self.text_field) for hit in hits],
            similarities=[knn.similarity(hit["_score"]) for hit in hits],
            ids=[str(hit["_id"]) for hit in hits],
        )
