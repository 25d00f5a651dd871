"""The artifact as a read-only LlamaIndex vector store.

``VectorStoreIndex.from_vector_store(ArtifactVectorStore(index))`` gives LlamaIndex's standard
retriever, query engine and chat engine over a published index, with ``MetadataFilters``
translated to the artifact's compact filter columns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

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
from .search import Condition, FilterGroup, SearchIndex

__all__ = ["ArtifactVectorStore", "translate_filters"]


def translate_filters(filters: MetadataFilters | None) -> FilterGroup | None:
    """LlamaIndex ``MetadataFilters`` → the search module's filters (``and``/``or``, nested)."""
    if filters is None:
        return None
    condition = str(getattr(filters.condition, "value", filters.condition) or "and")
    if condition not in ("and", "or"):
        raise UnsupportedFilter(f"filter condition {condition!r} is not supported")
    items: list[Condition | FilterGroup] = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            nested = translate_filters(item)
            if nested is not None:
                items.append(nested)
        else:
            items.append(_condition(item))
    return FilterGroup(tuple(items), "and" if condition == "and" else "or")


def _condition(item: MetadataFilter) -> Condition:
    return Condition(item.key, str(getattr(item.operator, "value", item.operator)), item.value)


class ArtifactVectorStore(BasePydanticVectorStore):
    """A published index, served read-only: ``query`` works, ``add`` and ``delete`` refuse."""

    stores_text: bool = True
    is_embedding_query: bool = True
    _index: SearchIndex = PrivateAttr()

    def __init__(self, index: SearchIndex, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._index = index

    @classmethod
    def class_name(cls) -> str:
        """LlamaIndex's name for this store."""
        return "ArtifactVectorStore"

    @property
    def client(self) -> SearchIndex:
        """The search index this store reads."""
        return self._index

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Refuse: published indexes are immutable; build a new one with the index builder."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Refuse: published indexes are immutable."""
        raise InvalidRequest("a published index is read-only; build a new index instead")

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Exact cosine search with the query's embedding, top k and metadata filters."""
        if query.query_embedding is None:
            raise InvalidRequest("the artifact store needs a query embedding")
        if query.mode != VectorStoreQueryMode.DEFAULT:
            raise InvalidRequest(f"query mode {query.mode.value!r} is not supported (dense only)")
        if query.doc_ids or query.node_ids:
            raise UnsupportedFilter("doc_ids / node_ids restrictions are not supported")
        hits = self._index.search(
            np.asarray(query.query_embedding, dtype=np.float32),
            query.similarity_top_k,
            translate_filters(query.filters),
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
