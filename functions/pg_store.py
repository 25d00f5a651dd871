"""LlamaIndex's ``PGVectorStore``, serving a loaded index as the artifact's store does.

The table is ``PGVectorStore``'s own layout, and hits become nodes with its own conversion
(``_db_rows_to_query_result``: ``metadata_dict_to_node`` on the stored ``metadata_``). Three
things are changed, because the artifact backend answers otherwise and answers must not depend
on the backend:

- the search is ``PostgresSearcher.rows``, the one retrieve mode makes: cosine similarities by
  the operator class the table's HNSW index was built with (the stock store orders by cosine
  distance, which no index of ours serves), filtered exactly when filters are given;
- filters are the artifact's (``MetadataFilters`` of every operator, nested, and the ``where``
  the HTTP API passes through ``vector_store_kwargs``), translated by ``pg_filters`` or refused;
- it holds no SQLAlchemy engine of its own: connections are the backend's pool; the index is
  read-only.
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
from llama_index.vector_stores.postgres import PGVectorStore
from llama_index.vector_stores.postgres.base import DBEmbeddingRow
from pydantic import PrivateAttr

from .errors import InvalidRequest
from .filters import FilterGroup
from .pg_search import PostgresSearcher
from .vector_store import translate_filters

__all__ = ["ServingStore"]

_READ_ONLY = "a published index is read-only; build a new index instead"


class ServingStore(PGVectorStore):
    """A loaded index in PostgreSQL, read-only, answering as ``ArtifactVectorStore``."""

    _searcher: PostgresSearcher = PrivateAttr()

    def __init__(self, searcher: PostgresSearcher) -> None:
        manifest = searcher.manifest
        super().__init__(
            table_name=manifest.index_id.replace("-", "_"),
            schema_name=searcher.schema,
            embed_dim=manifest.embedding.dim,
            use_jsonb=True,
            perform_setup=False,
        )
        self._searcher = searcher

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this store."""
        return "ServingPGVectorStore"

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

    def delete_nodes(self, *args: Any, **kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

    def clear(self) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest(_READ_ONLY)

    def query(
        self, query: VectorStoreQuery, where: FilterGroup | None = None, **kwargs: Any
    ) -> VectorStoreQueryResult:
        """Top k by cosine similarity among the chunks the query's filters, ``where``, node ids
        and document ids admit."""
        if query.query_embedding is None:
            raise InvalidRequest("the PostgreSQL store needs a query embedding")
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise InvalidRequest(f"query mode {query.mode.value!r} is not supported (dense only)")
        group = translate_filters(query.filters)
        if group is not None and where is not None:
            group = FilterGroup((group, where))
        rows = self._searcher.rows(
            query.query_embedding,
            query.similarity_top_k,
            where if group is None else group,
            node_ids=query.node_ids or None,  # LlamaIndex sends [] for "none given"
            doc_ids=query.doc_ids or None,
        )
        return self._db_rows_to_query_result(
            [
                DBEmbeddingRow(
                    node_id=node_id,
                    text=text,
                    metadata=metadata,
                    custom_fields={},
                    similarity=score,
                )
                for _, node_id, text, metadata, score in rows
            ]
        )

    async def aquery(
        self, query: VectorStoreQuery, where: FilterGroup | None = None, **kwargs: Any
    ) -> VectorStoreQueryResult:
        """``query``: one short statement on the pool (LlamaIndex's async engines call this)."""
        return self.query(query, where=where, **kwargs)
