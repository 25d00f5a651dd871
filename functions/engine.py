"""Answer mode through LlamaIndex: the index's vector store, our embedder, an Ollama LLM.

What the LLM is shown is ``prompts``'s; this module builds the engines, bounds the LLM's calls
by the answer's deadline, and translates their failures.

Importing this module imports ``llama_index.core`` (over a second of cold start), so the app
imports it only for answer mode with an LLM, never on the retrieve path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import httpx
import ollama
from llama_index.core import VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.base.response.schema import Response, StreamingResponse
from llama_index.core.chat_engine import CondensePlusContextChatEngine
from llama_index.core.constants import DEFAULT_NUM_OUTPUTS
from llama_index.core.llms import LLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import CompactAndRefine
from llama_index.core.schema import NodeWithScore
from llama_index.llms.ollama import Ollama
from pydantic import PrivateAttr

from .backends import Searcher
from .embeddings import Embedder, ollama_base_url
from .errors import InvalidRequest, RagError, UpstreamError, UpstreamTimeout
from .filters import equality_filter
from .prompts import CitationLabels, check_fits, synthesizer

__all__ = ["DEFAULT_MAX_TOKENS", "EmbedderAdapter", "LlamaAnswerer", "ollama_llm", "unlabelled"]

DEFAULT_MAX_TOKENS = 1024  # RAG_LLM_MAX_TOKENS's default
_SLACK_S = 0.05  # a timeout this close to the deadline is the deadline's
_END: Any = object()


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


def ollama_llm(
    model: str,
    host: str,
    *,
    context_window: int,
    timeout_s: float,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> LLM:
    """The Ollama LLM, with ``context_window`` set so it never calls ``/api/show`` to guess it.

    Each call writes at most ``max_tokens`` (``num_predict``; at most half the context window,
    so that a prompt keeps room). Its HTTP calls end by the deadline of the answer that makes
    them (``LlamaAnswerer``): every timeout of a call is cut to the time left, and a response
    still arriving when the deadline passes is closed, which stops Ollama generating.
    """
    client = ollama.Client(
        host=ollama_base_url(host),
        timeout=timeout_s,
        event_hooks={"request": [_bound_request], "response": [_bound_response]},
    )
    llm: LLM = Ollama(
        model=model,
        base_url=ollama_base_url(host),
        context_window=context_window,
        request_timeout=timeout_s,
        additional_kwargs={"num_predict": min(max_tokens, context_window // 2)},
        client=client,
    )
    return llm


# The deadline (time.monotonic()) of the answer the current thread is making, if any.
_DEADLINE: ContextVar[float | None] = ContextVar("llm_deadline", default=None)


@contextmanager
def _until(deadline: float | None) -> Iterator[None]:
    token = _DEADLINE.set(deadline)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def _bound_request(request: httpx.Request) -> None:
    """Cut each of the call's timeouts to the time left before the deadline."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpx.ReadTimeout("the answer's deadline passed before the call", request=request)
    timeouts: dict[str, float | None] = request.extensions.get("timeout") or {}
    cut = {}
    for name in _TIMEOUTS:
        configured = timeouts.get(name)
        cut[name] = left if configured is None else min(configured, left)
    request.extensions["timeout"] = cut


def _bound_response(response: httpx.Response) -> None:
    """Close the response when the deadline passes while it is still arriving."""
    deadline = _DEADLINE.get()
    if deadline is not None and isinstance(response.stream, httpx.SyncByteStream):
        response.stream = _Deadlined(response.stream, deadline)


_TIMEOUTS = ("connect", "read", "write", "pool")


class _Deadlined(httpx.SyncByteStream):
    """A response body that ends in ``ReadTimeout`` once its deadline has passed."""

    def __init__(self, stream: httpx.SyncByteStream, deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            if time.monotonic() > self._deadline:
                raise httpx.ReadTimeout("the answer's deadline passed while the LLM was writing")
            yield chunk

    def close(self) -> None:
        self._stream.close()


def unlabelled(nodes: list[Any]) -> list[tuple[str, float, str, dict[str, Any]]]:
    """(id, score, text, metadata) of each source the LLM was given, in citation order."""
    return [
        (n.node.node_id, float(n.score or 0.0), n.node.get_content(), dict(n.node.metadata))
        for n in nodes
    ]


class StatelessChatEngine(CondensePlusContextChatEngine):
    """LlamaIndex's condense-plus-context engine for a conversation the client keeps.

    The answer's prompt is ``prompts.synthesizer``'s: the instructions as the system message,
    then the conversation, then the sources and the last message in the user's turn (the stock
    engine puts the sources in the system message). ``stream_answer`` runs the engine's own
    condense-retrieve-synthesize steps and hands back the synthesizer's plain token generator.
    The stock ``stream_chat`` also starts a thread that copies the answer into the engine's
    memory; a stateless function has no use for it, and it cannot be stopped when the client
    goes away (it reads the LLM to the end, and closing the stream waits for it).
    """

    num_output: int = DEFAULT_MAX_TOKENS

    def _get_response_synthesizer(
        self, chat_history: list[ChatMessage], streaming: bool = False
    ) -> CompactAndRefine:
        return synthesizer(
            self._llm, num_output=self.num_output, history=chat_history, streaming=streaming
        )

    def stream_answer(
        self, message: str, chat_history: list[ChatMessage]
    ) -> tuple[Iterator[str], list[NodeWithScore]]:
        """The answer token by token, and the numbered sources it was given."""
        response_synthesizer, _, nodes = self._run_c3(message, chat_history, streaming=True)
        response = response_synthesizer.synthesize(message, nodes)
        if not isinstance(response, StreamingResponse) or response.response_gen is None:
            raise UpstreamError(f"the chat engine returned a {type(response).__name__}")
        return response.response_gen, list(nodes)


class LlamaAnswerer:
    """LlamaIndex's query and chat engines over one loaded index, answering with citations.

    Each answer may be given a ``deadline`` (``time.monotonic()``): the LLM calls it makes (one
    for an answer, two for a chat turn: condense, answer) end by then (``ollama_llm``).
    """

    def __init__(self, index: Searcher, embedder: Embedder, llm: LLM) -> None:
        self._index = VectorStoreIndex.from_vector_store(
            index.vector_store(), embed_model=EmbedderAdapter(embedder)
        )
        self._llm = llm
        self._timeout_s = float(getattr(llm, "request_timeout", 0) or 0)
        self._context_window = llm.metadata.context_window
        predict = getattr(llm, "additional_kwargs", {}).get("num_predict")
        self._num_output = int(predict) if predict else DEFAULT_NUM_OUTPUTS

    def check(self, history: list[tuple[str, str]], message: str) -> None:
        """Refuse (``ContextTooLong``) what the LLM's context window cannot take with sources
        and an answer, before any model call."""
        check_fits(
            _messages(history),
            message,
            context_window=self._context_window,
            num_output=self._num_output,
        )

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
                response_synthesizer=synthesizer(
                    self._llm, num_output=self._num_output, streaming=streaming
                ),
                node_postprocessors=[CitationLabels()],
            )

    def _chat_engine(self, top_k: int, filters: dict[str, Any]) -> StatelessChatEngine:
        with _built():
            # from_defaults builds ``cls(...)``: a StatelessChatEngine here. The memory only
            # holds the history the client sent, which check() has bounded: no truncation.
            engine: StatelessChatEngine = StatelessChatEngine.from_defaults(  # type: ignore[assignment]
                self._retriever(top_k, filters),
                llm=self._llm,
                memory=ChatMemoryBuffer.from_defaults(token_limit=2 * self._context_window),
                node_postprocessors=[CitationLabels()],
            )
        engine.num_output = self._num_output
        return engine

    def answer(
        self, query: str, top_k: int, filters: dict[str, Any], *, deadline: float | None = None
    ) -> tuple[str, list[Any]]:
        """The LLM's answer and the numbered ``NodeWithScore`` sources it was given."""
        engine = self._query_engine(top_k, filters, streaming=False)
        with self._translated(deadline), _until(deadline):
            response = engine.query(query)
        if not isinstance(response, Response):
            raise UpstreamError(f"the query engine returned a {type(response).__name__}")
        return str(response.response or ""), list(response.source_nodes)

    def stream(
        self, query: str, top_k: int, filters: dict[str, Any], *, deadline: float | None = None
    ) -> tuple[Iterator[str], list[Any]]:
        """The LLM's answer token by token, and its sources (known before the first token).

        Closing the iterator closes the HTTP stream from Ollama, which stops generating.
        """
        engine = self._query_engine(top_k, filters, streaming=True)
        with self._translated(deadline), _until(deadline):
            response = engine.query(query)
        if not isinstance(response, StreamingResponse) or response.response_gen is None:
            raise UpstreamError(f"the query engine returned a {type(response).__name__}")
        return self._tokens(response.response_gen, deadline), list(response.source_nodes)

    def chat(
        self,
        history: list[tuple[str, str]],
        message: str,
        top_k: int,
        filters: dict[str, Any],
        *,
        deadline: float | None = None,
    ) -> tuple[str, list[Any]]:
        """Condense the conversation and the message into a question, retrieve, answer."""
        engine = self._chat_engine(top_k, filters)
        with self._translated(deadline), _until(deadline):
            response = engine.chat(message, chat_history=_messages(history))
        return str(response.response or ""), list(response.source_nodes)

    def stream_chat(
        self,
        history: list[tuple[str, str]],
        message: str,
        top_k: int,
        filters: dict[str, Any],
        *,
        deadline: float | None = None,
    ) -> tuple[Iterator[str], list[Any]]:
        """``chat``, token by token."""
        engine = self._chat_engine(top_k, filters)
        with self._translated(deadline), _until(deadline):
            tokens, nodes = engine.stream_answer(message, _messages(history))
        return self._tokens(tokens, deadline), nodes

    def _tokens(self, tokens: Iterator[str], deadline: float | None) -> Iterator[str]:
        # The tokens are read in whichever thread drives this iterator: the deadline goes along.
        try:
            with self._translated(deadline):
                while True:
                    with _until(deadline):
                        token = next(tokens, _END)
                    if token is _END:
                        return
                    yield token
        finally:
            close = getattr(tokens, "close", None)
            if close is not None:
                close()

    @contextmanager
    def _translated(self, deadline: float | None) -> Iterator[None]:
        try:
            yield
        except RagError:
            raise
        except httpx.TimeoutException as exc:
            if deadline is not None and time.monotonic() >= deadline - _SLACK_S:
                raise UpstreamTimeout(
                    "the LLM did not answer before the request's deadline"
                ) from exc
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
