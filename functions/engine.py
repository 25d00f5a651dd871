"""Answer mode through LlamaIndex: the artifact's vector store, our embedder, an Ollama LLM.

Importing this module imports ``llama_index.core`` (over a second of cold start), so the app
imports it only for answer mode with an LLM, never on the retrieve path.
"""

from __future__ import annotations

from typing import Any

import httpx
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.response.schema import Response
from llama_index.core.llms import LLM
from llama_index.core.vector_stores.types import FilterOperator, MetadataFilter, MetadataFilters
from llama_index.llms.ollama import Ollama
from pydantic import PrivateAttr

from .embeddings import Embedder, ollama_base_url
from .errors import RagError, UpstreamError, UpstreamTimeout
from .search import SearchIndex
from .vector_store import ArtifactVectorStore

__all__ = ["EmbedderAdapter", "LlamaAnswerer", "ollama_llm"]


class EmbedderAdapter(BaseEmbedding):
    """Our ``Embedder`` as a LlamaIndex embedding model, so the query engine embeds like we do."""

    _embedder: Embedder = PrivateAttr()

    def __init__(self, embedder: Embedder, **kwargs: Any) -> None:
        super().__init__(model_name=embedder.model, **kwargs)
        self._embedder = embedder

    def _get_query_embedding(self, query: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_query(query)]

    def _get_text_embedding(self, text: str) -> list[float]:
        return [float(x) for x in self._embedder.embed_documents([text])[0]]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)


def ollama_llm(model: str, host: str, *, context_window: int, timeout_s: float) -> LLM:
    """The Ollama LLM, with ``context_window`` set so it never calls ``/api/show`` to guess it."""
    llm: LLM = Ollama(
        model=model,
        base_url=ollama_base_url(host),
        context_window=context_window,
        request_timeout=timeout_s,
    )
    return llm


class LlamaAnswerer:
    """A LlamaIndex query engine over one loaded index."""

    def __init__(self, index: SearchIndex, embedder: Embedder, llm: LLM) -> None:
        self._index = VectorStoreIndex.from_vector_store(
            ArtifactVectorStore(index), embed_model=EmbedderAdapter(embedder)
        )
        self._llm = llm
        self._timeout_s = float(getattr(llm, "request_timeout", 0) or 0)

    def answer(self, query: str, top_k: int, filters: dict[str, Any]) -> tuple[str, list[Any]]:
        """The LLM's answer and the ``NodeWithScore`` sources it was given."""
        metadata_filters = (
            MetadataFilters(
                filters=[
                    MetadataFilter(key=k, value=v, operator=FilterOperator.EQ)
                    for k, v in filters.items()
                ]
            )
            if filters
            else None
        )
        engine = self._index.as_query_engine(
            llm=self._llm, similarity_top_k=top_k, filters=metadata_filters
        )
        try:
            response = engine.query(query)
        except RagError:
            raise
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the LLM did not answer within {self._timeout_s:g} s") from exc
        except Exception as exc:  # ollama.ResponseError, httpx errors
            raise UpstreamError(f"the LLM failed to answer: {type(exc).__name__}: {exc}") from exc
        if not isinstance(response, Response):
            raise UpstreamError(f"the query engine returned a {type(response).__name__}")
        return str(response.response or ""), list(response.source_nodes)
