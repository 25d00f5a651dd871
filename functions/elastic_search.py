"""Searching one index in Elasticsearch: the request both paths make (``Knn``), retrieve mode's
searcher (``ElasticsearchSearcher``), and a hit read back as the artifact's record.

Retrieve mode searches with the Elasticsearch client's ``AsyncVectorStore`` (the one LlamaIndex's
``ElasticsearchStore`` wraps) and imports no LlamaIndex; answer mode and chat get LlamaIndex's
store (``elastic_store.ServingStore``) over the same requests, made on first use, after
readiness. Both run on the backend's one event loop (``elastic``).
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import numpy.typing as npt

from .artifact import Manifest, NodeRecord
from .backends import record_of
from .elastic import SLACK_S
from .errors import ElasticsearchError, ElasticsearchUnavailable, InvalidRequest
from .es_filters import es_filter
from .filters import FilterGroup
from .search import Hit, checked_query

if TYPE_CHECKING:
    from .elastic import ElasticsearchBackend

__all__ = ["TEXT", "VECTOR", "ElasticsearchSearcher", "Knn", "vector_store"]

T = TypeVar("T")

TEXT, VECTOR = "content", "embedding"  # index_builder.elastic_layout's fields


class Knn:
    """One index's kNN searches as both paths make them (``ElasticsearchSearcher.search`` and
    LlamaIndex's store, ``elastic_store``): the request, and the similarity of a hit."""

    def __init__(
        self,
        facts: dict[str, dict[str, Any]] | None,
        dim: int,
        *,
        num_candidates: int = 1000,
        hybrid: bool = False,
    ) -> None:
        self.facts, self.dim = facts, dim
        self.num_candidates, self.hybrid = num_candidates, hybrid

    def request(
        self,
        vector: Any,
        top_k: int,
        where: FilterGroup | None,
        *,
        text: str | None = None,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """The arguments of ``AsyncVectorStore.search``; refuses what the artifact's search
        refuses (a wrong dimension, a zero or non-finite vector, a top k below 1) and the
        filters ``es_filters`` cannot translate exactly."""
        exact, norm = checked_query(vector, self.dim, top_k)
        if self.hybrid and not text:
            raise InvalidRequest("hybrid retrieval needs the question's text")
        clauses = es_filter(where, self.facts, node_ids=node_ids, doc_ids=doc_ids)
        return {
            "query": text if self.hybrid else None,
            # dot_product needs unit-length query vectors; the cosine is the same at any length
            "query_vector": (exact / norm).astype(np.float32).tolist(),
            "k": top_k,
            "num_candidates": max(self.num_candidates, top_k),
            "filter": clauses,
        }

    def similarity(self, score: float) -> float:
        """A dense hit's cosine: Elasticsearch scores dot_product and cosine as (1 + cos) / 2.
        Hybrid scores (kNN plus BM25) are Elasticsearch's own."""
        return float(score) if self.hybrid else 2.0 * float(score) - 1.0


def vector_store(client: Any, index: str, hybrid: bool) -> Any:
    """The Elasticsearch client's ``AsyncVectorStore`` on a loaded index, the one LlamaIndex's
    ``ElasticsearchStore`` wraps: dense kNN, or hybrid with a BM25 match in the same search (no
    RRF: the basic licence lacks it)."""
    from elasticsearch.helpers.vectorstore import (
        AsyncDenseVectorStrategy,
        AsyncVectorStore,
        DistanceMetric,
    )

    strategy = AsyncDenseVectorStrategy(
        distance=DistanceMetric.DOT_PRODUCT, hybrid=hybrid, rrf=False, text_field=TEXT
    )
    return AsyncVectorStore(
        client, index=index, retrieval_strategy=strategy, text_field=TEXT, vector_field=VECTOR
    )


class ElasticsearchSearcher:
    """One index in Elasticsearch. Retrieve mode searches with the client's ``AsyncVectorStore``
    and no LlamaIndex (so the cold start does not import it); answer mode and chat get
    LlamaIndex's ``ElasticsearchStore`` over the same searches (``vector_store``), made on first
    use, after readiness."""

    def __init__(
        self,
        backend: ElasticsearchBackend,
        index: str,
        manifest: Manifest,
        facts: dict[str, dict[str, Any]] | None,
    ) -> None:
        self._backend = backend
        self._manifest = manifest
        self.index = index
        self.knn = Knn(
            facts,
            manifest.embedding.dim,
            num_candidates=backend.num_candidates,
            hybrid=backend.hybrid,
        )
        _, self._client = backend._started()
        self._vectors = vector_store(self._client, index, backend.hybrid)
        self._store: Any = None
        self._lock = threading.Lock()

    @property
    def manifest(self) -> Manifest:
        """The index's manifest, from its ``_meta``."""
        return self._manifest

    def __len__(self) -> int:
        return self._manifest.counts.chunks

    def search(
        self,
        query: npt.NDArray[np.float32],
        top_k: int,
        where: FilterGroup | None = None,
        *,
        text: str | None = None,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> list[Hit]:
        """Top k by kNN (and BM25 on ``text`` with hybrid retrieval), filtered by ``where``."""
        request = self.knn.request(
            query, top_k, where, text=text, node_ids=node_ids, doc_ids=doc_ids
        )
        hits = self.searched(self._vectors.search(**request))
        return [Hit(-1, self.knn.similarity(hit["_score"]), _record(hit)) for hit in hits]

    def searched(self, work: Coroutine[Any, Any, T]) -> T:
        """Run a search on the backend's loop; an index deleted meanwhile is 503."""
        from elasticsearch import NotFoundError

        try:
            return self._backend.call(work, f"search {self.index}")
        except ElasticsearchError as exc:
            if isinstance(exc.__cause__, NotFoundError):  # deleted under a serving function
                raise ElasticsearchUnavailable(
                    f"{self.index} is gone from Elasticsearch: {exc.message}",
                    public="the index is gone from Elasticsearch",
                ) from exc
            raise

    def vector_store(self) -> Any:
        """LlamaIndex's ``ElasticsearchStore`` on this index (imports LlamaIndex)."""
        with self._lock:
            if self._store is None:
                from .elastic_store import ServingStore

                async def make() -> Any:  # on the loop: nest_asyncio patches this loop only
                    return ServingStore(self.index, self._client, searcher=self)

                self._store = self._backend._started()[0].run(
                    make(), self._backend.timeout_s + SLACK_S
                )
            return self._store

    def close(self) -> None:
        """Searches already started finish; the client is the backend's, shared."""


def _record(hit: dict[str, Any]) -> NodeRecord:
    """A hit as the artifact's record: its node JSON, and the text from ``content``."""
    source = hit["_source"]
    return record_of(str(hit["_id"]), source[TEXT], source["metadata"]["_node_content"])
