"""The artifact as a read-only LlamaIndex vector store.

``VectorStoreIndex.from_vector_store(ArtifactVectorStore(index))`` gives LlamaIndex's standard
retriever, query engine and chat engine over a published index, with ``MetadataFilters``
translated to the artifact's compact filter columns. Its answers are ``SimpleVectorStore``'s over
the same nodes and vectors (see ``filters`` and ``search`` for the few documented differences):
the same ids in the same order, the same scores.

A filter already translated (the HTTP API's) comes in as the ``where`` keyword, which LlamaIndex's
retriever passes through from ``vector_store_kwargs``: it is never re-validated by LlamaIndex's
``MetadataFilter``, which refuses values such as ``True`` that the HTTP API allows.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Protocol

import numpy as np
from llama_index.core.schema import BaseNode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from pydantic import PrivateAttr

from .errors import InvalidRequest, UnsupportedFilter
from .filters import Combine, Condition, FilterGroup
from .search import Hit

__all__ = ["ArtifactVectorStore", "translate_filters"]


def translate_filters(filters: MetadataFilters | None) -> FilterGroup | None:
    """LlamaIndex ``MetadataFilters`` → the filters module's groups (``and``/``or``/``not``,
    nested)."""
    return None if filters is None else _group(filters)


def _group(filters: MetadataFilters) -> FilterGroup:
    condition = str(getattr(filters.condition, "value", filters.condition) or "and")
    if condition not in _COMBINE:
        raise UnsupportedFilter(f"filter condition {condition!r} is not supported")
    items = tuple(
        _group(item) if isinstance(item, MetadataFilters) else _condition(item)
        for item in filters.filters
    )
    return FilterGroup(items, _COMBINE[condition])


_COMBINE: dict[str, Combine] = {"and": "and", "or": "or", "not": "not"}


def _condition(item: MetadataFilter) -> Condition:
    return Condition(item.key, str(getattr(item.operator, "value", item.operator)), item.value)


class Searchable(Protocol):
    """What the store searches: ``search.SearchIndex``, or ``tiered.TieredSearcher``."""

    def search(
        self,
        query: Any,
        top_k: int,
        where: FilterGroup | None = None,
        *,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        """Top-k search, as ``SearchIndex.search``."""


class ArtifactVectorStore(BasePydanticVectorStore):
    """A published index, served read-only: ``query`` works, ``add`` and ``delete`` refuse."""

    stores_text: bool = True
    is_embedding_query: bool = True
    _index: Searchable = PrivateAttr()

    def __init__(self, index: Searchable, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = index

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this store."""
        return "ArtifactVectorStore"

    @property
    def client(self) -> Searchable:
        """The search index this store reads."""
        return self._index

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable; build a new one with the index builder."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def query(
        self, query: VectorStoreQuery, where: FilterGroup | None = None, **kwargs: Any
    ) -> VectorStoreQueryResult:
        """Exact cosine search with the query's embedding, top k, metadata filters, node and
        document ids, and ``where`` (a filter already translated) on top of its filters.

        Empty ``node_ids`` or ``doc_ids`` restrict nothing: LlamaIndex's retriever sends
        ``node_ids=[]`` to every store that keeps its own text, meaning "none given".
        """
        if query.query_embedding is None:
            raise InvalidRequest("the artifact store needs a query embedding")
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise InvalidRequest(f"query mode {query.mode.value!r} is not supported (dense only)")
        filters = translate_filters(query.filters)
        if filters is not None and where is not None:
            where = FilterGroup((filters, where))
        hits = self._index.search(
            np.asarray(query.query_embedding, dtype=np.float64),
            query.similarity_top_k,
            filters if where is None else where,
            node_ids=query.node_ids or None,
            doc_ids=query.doc_ids or None,
        )
        nodes: list[BaseNode] = [
            TextNode(
                id_=hit.record.id,
                text=hit.record.text,
                metadata=hit.record.metadata,
                relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.record.doc_id)},
            )
            for hit in hits
        ]
        return VectorStoreQueryResult(
            nodes=nodes,
            similarities=[hit.score for hit in hits],
            ids=[hit.record.id for hit in hits],
        )
