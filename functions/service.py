"""Answering against one loaded index: retrieve mode, extractive and LLM answers, chat, streams.

Retrieve mode and the extractive answer use the search module directly (no LlamaIndex import on
that path); LLM answers go through LlamaIndex's query and chat engines (``engine``), built on
first use. Every answer says which sources it cites: the [n] markers an LLM wrote (source n is
the n-th source), or the sources of the sentences an extractive answer chose. Sources carry the
chunk's metadata but for what describes the builder's machine (``INTERNAL_METADATA``).

An LLM answer is checked against the LLM's context window first (``ContextTooLong``, 413, no
model call); then it takes one of the process's answer slots (``AnswerLimits``: none free is
``ModelBusy``, 503, at once) and holds it until its last token, and its model calls end by its
deadline, so that the work of an answer ends with its request.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .artifact import Manifest
from .backends import Searcher
from .embeddings import Embedder
from .filters import equality_filter
from .limits import AnswerLimits, releasing
from .search import Hit

__all__ = [
    "INTERNAL_METADATA",
    "AnswerStream",
    "Answerer",
    "Observer",
    "QueryResult",
    "QueryService",
    "Source",
    "cited_ids",
    "extractive_answer",
]

# Told of every model-server call: which (embed or llm), seconds, and the error class if it failed.
Observer = Callable[[str, float, str | None], None]

# What LlamaIndex's file readers record about the builder's machine (SimpleDirectoryReader's
# file metadata, HTMLTagReader's tag): never shown to clients, nor to the LLM (``prompts``).
INTERNAL_METADATA = frozenset(
    {
        "file_path",
        "file_size",
        "creation_date",
        "last_modified_date",
        "last_accessed_date",
        "tag",
        "tag_id",
    }
)

_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_WRAPPED = re.compile(r"(?<!\n)\n(?![\n\-*#]|\s*\d+\.)")


@dataclass(frozen=True)
class Source:
    """A chunk that a result rests on."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


AnswerType = Literal["generated", "extractive"]
History = list[tuple[str, str]]  # (role, content): "user" or "assistant"


@dataclass(frozen=True)
class QueryResult:
    """What ``/query`` and ``/chat`` answer."""

    answer: str | None
    answer_type: AnswerType | None
    sources: list[Source]
    index_id: str
    cited: list[str] = field(default_factory=list)


@dataclass
class AnswerStream:
    """An answer still being written: its sources now, its text token by token.

    ``tokens`` is a plain iterator (it blocks on the model server); closing it stops the LLM.
    ``result`` gives the whole answer, with its citations, once the tokens are exhausted.
    """

    sources: list[Source]
    answer_type: AnswerType | None
    index_id: str
    tokens: Iterator[str]
    cited: list[str] | None = None  # known up front (extractive); else parsed from the text

    def result(self, text: str | None) -> QueryResult:
        """The finished answer."""
        cited = self.cited
        if cited is None:
            cited = cited_ids(text or "", [source.id for source in self.sources])
        return QueryResult(text, self.answer_type, self.sources, self.index_id, cited)


class Answerer(Protocol):
    """LLM answers and their sources (``engine.LlamaAnswerer`` in production); sources are
    LlamaIndex ``NodeWithScore`` objects labelled for citation, in citation order. The model
    calls of an answer end by its ``deadline`` (``time.monotonic()``), if given."""

    def check(self, history: History, message: str) -> None:
        """Refuse (``ContextTooLong``) what the LLM's context window cannot take."""

    def answer(
        self, query: str, top_k: int, filters: dict[str, Any], *, deadline: float | None = None
    ) -> tuple[str, list[Any]]:
        """The answer text and its sources."""

    def stream(
        self, query: str, top_k: int, filters: dict[str, Any], *, deadline: float | None = None
    ) -> tuple[Iterator[str], list[Any]]:
        """The answer token by token, and its sources."""

    def chat(
        self,
        history: History,
        message: str,
        top_k: int,
        filters: dict[str, Any],
        *,
        deadline: float | None = None,
    ) -> tuple[str, list[Any]]:
        """The next assistant message of a conversation, and its sources."""

    def stream_chat(
        self,
        history: History,
        message: str,
        top_k: int,
        filters: dict[str, Any],
        *,
        deadline: float | None = None,
    ) -> tuple[Iterator[str], list[Any]]:
        """``chat``, token by token."""


def cited_ids(text: str, ids: list[str]) -> list[str]:
    """The ids of the sources ``text`` cites as [n] or [n, m] (1-based), first citation first."""
    cited: list[str] = []
    for group in _CITATION.findall(text):
        for number in group.split(","):
            n = int(number)
            if 1 <= n <= len(ids) and ids[n - 1] not in cited:
                cited.append(ids[n - 1])
    return cited


def extractive_answer(
    query_vector: npt.NDArray[np.float32], hits: list[Hit], embedder: Embedder, sentences: int = 3
) -> tuple[str, list[str]]:
    """The sentences of the top sources closest to the query, in their original order, and the
    ids of the sources they came from."""
    candidates = [
        (line.strip().lstrip("#").strip(), hit.record.id)
        for hit in hits[:3]
        for line in _SENTENCE.split(_WRAPPED.sub(" ", hit.record.text))
        if len(line.strip()) > 20
    ][:64]
    if not candidates:
        return (hits[0].record.text.strip(), [hits[0].record.id]) if hits else ("", [])
    scores = embedder.embed_documents([text for text, _ in candidates]) @ query_vector
    best = sorted(int(i) for i in np.argsort(-scores, kind="stable")[:sentences])
    cited = list(dict.fromkeys(candidates[i][1] for i in best))
    return " ".join(candidates[i][0] for i in best), cited


class QueryService:
    """Queries over one opened index (any backend's ``Searcher``) with one embedder; the LLM
    answerer is built lazily."""

    def __init__(
        self,
        index: Searcher,
        embedder: Embedder,
        *,
        make_answerer: Callable[[Searcher, Embedder], Answerer] | None = None,
        observe: Observer | None = None,
        limits: AnswerLimits | None = None,
    ) -> None:
        self.index = index
        self.limits = limits or AnswerLimits()
        self._observe = observe
        self.embedder = embedder
        self.manifest: Manifest = index.manifest
        self.index_id = self.manifest.index_id
        self._make_answerer = make_answerer
        self._answerer: Answerer | None = None
        self._lock = threading.Lock()

    @contextmanager
    def timed(self, call: str) -> Iterator[None]:
        """Time a model-server call and tell the observer, failed or not."""
        started, error = time.perf_counter(), None
        try:
            yield
        except Exception as exc:
            error = type(exc).__name__
            raise
        finally:
            if self._observe is not None:
                self._observe(call, time.perf_counter() - started, error)

    def embed_query(self, query: str) -> npt.NDArray[np.float32]:
        """The query's vector, from the embedding model (timed)."""
        with self.timed("embed"):
            return self.embedder.embed_query(query)

    def retrieve(self, query: str, top_k: int, filters: dict[str, Any]) -> QueryResult:
        """The top-k sources, no answer."""
        vector = self.embed_query(query)
        with self.timed("search"):
            hits = self.index.search(vector, top_k, equality_filter(filters), text=query)
        return QueryResult(None, None, [_source(hit) for hit in hits], self.index_id)

    def answer(self, query: str, top_k: int, filters: dict[str, Any]) -> QueryResult:
        """An LLM answer when an LLM is configured, else an extractive one; with its sources."""
        if self._make_answerer is None:
            return self._extractive(query, top_k, filters)
        answerer = self._llm_answerer()
        answerer.check([], query)
        deadline, release = self.limits.take()
        try:
            with self.timed("llm"):
                text, nodes = answerer.answer(query, top_k, filters, deadline=deadline)
        finally:
            release()
        return self._generated(nodes).result(text)

    def chat(
        self, history: History, message: str, top_k: int, filters: dict[str, Any]
    ) -> QueryResult:
        """The next assistant message. Without an LLM: an extractive answer to ``message``."""
        if self._make_answerer is None:
            return self._extractive(message, top_k, filters)
        answerer = self._llm_answerer()
        answerer.check(history, message)
        deadline, release = self.limits.take()
        try:
            with self.timed("llm"):
                text, nodes = answerer.chat(history, message, top_k, filters, deadline=deadline)
        finally:
            release()
        return self._generated(nodes).result(text)

    def stream(
        self,
        query: str,
        top_k: int,
        filters: dict[str, Any],
        *,
        mode: Literal["answer", "retrieve"] = "answer",
        history: History | None = None,
    ) -> AnswerStream:
        """``answer`` (or ``chat``, given a history) as a stream; retrieve mode has no tokens."""
        if mode == "retrieve":
            result = self.retrieve(query, top_k, filters)
            return AnswerStream(result.sources, None, self.index_id, iter(()), [])
        if self._make_answerer is None:
            result = self._extractive(query, top_k, filters)
            return AnswerStream(
                result.sources,
                "extractive",
                self.index_id,
                iter([result.answer or ""]),
                result.cited,
            )
        answerer = self._llm_answerer()
        answerer.check(history or [], query)
        deadline, release = self.limits.take()
        try:
            with self.timed("llm"):  # retrieval and the request; the tokens are timed as they come
                if history is None:
                    tokens, nodes = answerer.stream(query, top_k, filters, deadline=deadline)
                else:
                    tokens, nodes = answerer.stream_chat(
                        history, query, top_k, filters, deadline=deadline
                    )
        except BaseException:
            release()
            raise
        return self._generated(nodes, releasing(tokens, release))

    def _extractive(self, query: str, top_k: int, filters: dict[str, Any]) -> QueryResult:
        vector = self.embed_query(query)
        with self.timed("search"):
            hits = self.index.search(vector, top_k, equality_filter(filters), text=query)
        text, cited = extractive_answer(vector, hits, self.embedder)
        sources = [_source(hit) for hit in hits]
        return QueryResult(text, "extractive", sources, self.index_id, cited)

    def _generated(self, nodes: list[Any], tokens: Iterator[str] | None = None) -> AnswerStream:
        from .engine import unlabelled

        sources = [
            Source(node, score, text, _public(metadata))
            for node, score, text, metadata in unlabelled(nodes)
        ]
        return AnswerStream(sources, "generated", self.index_id, tokens or iter(()))

    def warm(self) -> None:
        """Build the LLM answerer now (in a background thread), not at the first answer."""
        if self._make_answerer is not None:
            self._llm_answerer()

    def _llm_answerer(self) -> Answerer:
        assert self._make_answerer is not None
        with self._lock:
            if self._answerer is None:
                # LlamaIndex embeds the question through this: timed like our own calls.
                self._answerer = self._make_answerer(self.index, _TimedEmbedder(self))
            return self._answerer


class _TimedEmbedder:
    """The service's embedder, each query embedding timed and reported as an ``embed`` call."""

    def __init__(self, service: QueryService) -> None:
        # Weak: the service holds the answerer that holds this; no cycle keeps an old index.
        self._service: QueryService = weakref.proxy(service)
        self.provider = service.embedder.provider
        self.model = service.embedder.model

    def embed_query(self, text: str) -> npt.NDArray[np.float32]:
        return self._service.embed_query(text)

    def embed_documents(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return self._service.embedder.embed_documents(texts)


def _source(hit: Hit) -> Source:
    return Source(hit.record.id, hit.score, hit.record.text, _public(hit.record.metadata))


def _public(metadata: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in metadata.items() if key not in INTERNAL_METADATA}
