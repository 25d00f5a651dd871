"""Answer mode through LlamaIndex: the artifact's vector store, our embedder, an Ollama LLM.

Importing this module imports ``llama_index.core`` (over a second of cold start), so the app
imports it only for answer mode with an LLM, never on the retrieve path.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.llms import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.query_engine.citation_query_engine import (
    CITATION_QA_TEMPLATE,
    CITATION_REFINE_TEMPLATE,
)
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from llama_index.llms.ollama import Ollama
from pydantic import PrivateAttr

from .embeddings import Embedder, ollama_base_url
from .errors import InvalidRequest, RagError, UpstreamError, UpstreamTimeout
from .filters import equality_filter
from .search import SearchIndex
from .vector_store import ArtifactVectorStore

__all__ = ["CitationLabels", "EmbedderAdapter", "LlamaAnswerer", "ollama_llm", "unlabelled"]


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


class CitationLabels(BaseNodePostprocessor):
    """Labels the sources ``Source 1:``, ``Source 2:`` ... as LlamaIndex's citation engine does,
    so the LLM can cite them as [1], [2]; the label numbers the sources in retrieval order."""

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        labelled = []
        for number, hit in enumerate(nodes, 1):
            node = TextNode.model_validate(hit.node.model_dump())
            node.set_content(f"Source {number}:\n{hit.node.get_content()}")
            labelled.append(NodeWithScore(node=node, score=hit.score))
        return labelled


_LABEL = re.compile(r"^Source \d+:\n")

# The chat engine's context prompt, asking for the same [n] citations as the query engine's.
CHAT_CONTEXT_PROMPT = (
    "The following is a conversation between a user and an assistant that answers from the "
    "numbered sources below only. When it uses a source it cites it by number, like [1] or "
    "[2][3]; if the sources do not hold the answer it says it does not know.\n\n"
    "Sources:\n{context_str}\n\n"
    "Instruction: using the sources above, answer the user's question below, citing sources."
)


def unlabelled(nodes: list[Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(id, score, original text, metadata) of each labelled source, in citation order."""
    return [
        (
            n.node.node_id,
            float(n.score or 0.0),
            _LABEL.sub("", n.node.get_content(), count=1),
            dict(n.node.metadata),
        )
        for n in nodes
    ]


class StatelessChatEngine(CondensePlusContextChatEngine):
    """LlamaIndex's condense-plus-context engine for a conversation the client keeps.

    ``stream_answer`` runs the engine's own condense-retrieve-synthesize steps and hands back the
    synthesizer's plain token generator. The stock ``stream_chat`` also starts a thread that
    copies the answer into the engine's memory; a stateless function has no use for it, and it
    cannot be stopped when the client goes away (it reads the LLM to the end, and closing the
    stream waits for it).
    """

    def stream_answer(
        self, message: str, chat_history: list[ChatMessage]
    ) -> tuple[Iterator[str], list[NodeWithScore]]:
        """The answer token by token, and the labelled sources it was given."""
        synthesizer, _, nodes = self._run_c3(message, chat_history, streaming=True)
        response = synthesizer.synthesize(message, nodes)
        if not isinstance(response, StreamingResponse) or response.response_gen is None:
            raise UpstreamError(f"the chat engine returned a {type(response).__name__}")
        return response.response_gen, list(nodes)


class LlamaAnswerer:
    """LlamaIndex's query and chat engines over one loaded index, answering with citations."""

    def __init__(self, index: SearchIndex, embedder: Embedder, llm: LLM) -> None:
        self._index = VectorStoreIndex.from_vector_store(
            ArtifactVectorStore(index), embed_model=EmbedderAdapter(embedder)
        )
        self._llm = llm
        self._timeout_s = float(getattr(llm, "request_timeout", 0) or 0)

    def _retriever(self, top_k: int, filters: dict[str, Any]) -> Any:
        # The HTTP filters go to the vector store as they are, already translated: LlamaIndex's
        # MetadataFilter would refuse values the API allows (True), and evaluates them the same.
        return self._index.as_retriever(
            similarity_top_k=top_k, vector_store_kwargs={"where": equality_filter(filters)}
        )

    def _query_engine(self, top_k: int, filters: dict[str, Any], streaming: bool) -> Any:
        with _built():
            return RetrieverQueryEngine.from_args(
                self._retriever(top_k, filters),
                llm=self._llm,
                node_postprocessors=[CitationLabels()],
                text_qa_template=CITATION_QA_TEMPLATE,
                refine_template=CITATION_REFINE_TEMPLATE,
                streaming=streaming,
            )

    def _chat_engine(self, top_k: int, filters: dict[str, Any]) -> StatelessChatEngine:
        with _built():
            # from_defaults builds ``cls(...)``: a StatelessChatEngine here.
            return StatelessChatEngine.from_defaults(  # type: ignore[return-value]
                self._retriever(top_k, filters),
                llm=self._llm,
                context_prompt=CHAT_CONTEXT_PROMPT,
                node_postprocessors=[CitationLabels()],
            )

    def answer(self, query: str, top_k: int, filters: dict[str, Any]) -> tuple[str, list[Any]]:
        """The LLM's answer and the labelled ``NodeWithScore`` sources it was given."""
        engine = self._query_engine(top_k, filters, streaming=False)
        with self._translated():
            response = engine.query(query)
        if not isinstance(response, Response):
            raise UpstreamError(f"the query engine returned a {type(response).__name__}")
        return str(response.response or ""), list(response.source_nodes)

    def stream(
        self, query: str, top_k: int, filters: dict[str, Any]
    ) -> tuple[Iterator[str], list[Any]]:
        """The LLM's answer token by token, and its sources (known before the first token).

        Closing the iterator closes the HTTP stream from Ollama, which stops generating.
        """
        engine = self._query_engine(top_k, filters, streaming=True)
        with self._translated():
            response = engine.query(query)
        if not isinstance(response, StreamingResponse) or response.response_gen is None:
            raise UpstreamError(f"the query engine returned a {type(response).__name__}")
        return self._tokens(response.response_gen), list(response.source_nodes)

    def chat(
        self, history: list[tuple[str, str]], message: str, top_k: int, filters: dict[str, Any]
    ) -> tuple[str, list[Any]]:
        """Condense the conversation and the message into a question, retrieve, answer."""
        engine = self._chat_engine(top_k, filters)
        with self._translated():
            response = engine.chat(message, chat_history=_messages(history))
        return str(response.response or ""), list(response.source_nodes)

    def stream_chat(
        self, history: list[tuple[str, str]], message: str, top_k: int, filters: dict[str, Any]
    ) -> tuple[Iterator[str], list[Any]]:
        """``chat``, token by token."""
        engine = self._chat_engine(top_k, filters)
        with self._translated():
            tokens, nodes = engine.stream_answer(message, _messages(history))
        return self._tokens(tokens), nodes

    def _tokens(self, tokens: Iterator[str]) -> Iterator[str]:
        try:
            with self._translated():
                yield from tokens
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except RagError:
            raise
        except httpx.TimeoutException as exc:
            raise UpstreamTimeout(f"the LLM did not answer within {self._timeout_s:g} s") from exc
        except Exception as exc:  # ollama.ResponseError, httpx errors
            status = getattr(exc, "status_code", None)  # ollama.ResponseError: 404 no such model
            raise UpstreamError(
                f"the LLM failed to answer: {type(exc).__name__}: {exc}",
                transient=not (isinstance(status, int) and 400 <= status < 500 and status != 429),
            ) from exc


@contextmanager
def _built() -> Iterator[None]:
    """Building an engine from the request's parameters calls no model server: what LlamaIndex
    refuses there (its pydantic models' ValidationError is a ValueError) is the request's error,
    never an outage."""
    try:
        yield
    except RagError:
        raise
    except ValueError as exc:
        raise InvalidRequest(
            f"LlamaIndex refused the request: {type(exc).__name__}: {exc}",
            public="LlamaIndex refused the request's parameters",
        ) from exc


def _messages(history: list[tuple[str, str]]) -> list[ChatMessage]:
    return [ChatMessage(role=MessageRole(role), content=content) for role, content in history]
