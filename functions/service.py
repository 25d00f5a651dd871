"""Answering a query against one loaded index: retrieve mode, extractive and LLM answers.

Retrieve mode and the extractive answer use the search module directly (no LlamaIndex import on
that path); LLM answers go through LlamaIndex's query engine (``engine``), built on first use.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from .artifact import Manifest
from .embeddings import Embedder
from .search import Hit, SearchIndex, equality_filter

__all__ = ["Answerer", "QueryResult", "QueryService", "Source", "extractive_answer"]

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n{2,}")
_WRAPPED = re.compile(r"(?<!\n)\n(?![\n\-*#]|\s*\d+\.)")


@dataclass(frozen=True)
class Source:
    """A chunk that a result rests on."""

    id: str
    score: float
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QueryResult:
    """What ``/query`` answers."""

    answer: str | None
    answer_type: Literal["generated", "extractive"] | None
    sources: list[Source]
    index_id: str


class Answerer(Protocol):
    """Produces an LLM answer and its sources (``engine.LlamaAnswerer`` in production)."""

    def answer(self, query: str, top_k: int, filters: dict[str, Any]) -> tuple[str, list[Any]]:
        """The answer text and LlamaIndex ``NodeWithScore`` sources."""


def extractive_answer(
    query_vector: npt.NDArray[np.float32], hits: list[Hit], embedder: Embedder, sentences: int = 3
) -> str:
    """The sentences of the top sources closest to the query, in their original order."""
    candidates = [
        line.strip().lstrip("#").strip()
        for hit in hits[:3]
        for line in _SENTENCE.split(_WRAPPED.sub(" ", hit.record.text))
        if len(line.strip()) > 20
    ][:64]
    if not candidates:
        return hits[0].record.text.strip() if hits else ""
    scores = embedder.embed_documents(candidates) @ query_vector
    best = sorted(int(i) for i in np.argsort(-scores, kind="stable")[:sentences])
    return " ".join(candidates[i] for i in best)


class QueryService:
    """Queries over one loaded index with one embedder; the LLM answerer is built lazily."""

    def __init__(
        self,
        index: SearchIndex,
        embedder: Embedder,
        *,
        make_answerer: Callable[[SearchIndex, Embedder], Answerer] | None = None,
    ) -> None:
        self.index = index
        self.embedder = embedder
        self.manifest: Manifest = index.artifact.manifest
        self.index_id = self.manifest.index_id
        self._make_answerer = make_answerer
        self._answerer: Answerer | None = None
        self._lock = threading.Lock()

    def retrieve(self, query: str, top_k: int, filters: dict[str, Any]) -> QueryResult:
        """The top-k sources, no answer."""
        hits = self.index.search(self.embedder.embed_query(query), top_k, equality_filter(filters))
        return QueryResult(None, None, [_source(hit) for hit in hits], self.index_id)

    def answer(self, query: str, top_k: int, filters: dict[str, Any]) -> QueryResult:
        """An LLM answer when an LLM is configured, else an extractive one; with its sources."""
        if self._make_answerer is None:
            vector = self.embedder.embed_query(query)
            hits = self.index.search(vector, top_k, equality_filter(filters))
            text = extractive_answer(vector, hits, self.embedder)
            return QueryResult(text, "extractive", [_source(hit) for hit in hits], self.index_id)
        text, nodes = self._llm_answerer().answer(query, top_k, filters)
        sources = [
            Source(
                n.node.node_id, float(n.score or 0.0), n.node.get_content(), dict(n.node.metadata)
            )
            for n in nodes
        ]
        return QueryResult(text, "generated", sources, self.index_id)

    def warm(self) -> None:
        """Build the LLM answerer now (in a background thread), not at the first answer."""
        if self._make_answerer is not None:
            self._llm_answerer()

    def _llm_answerer(self) -> Answerer:
        assert self._make_answerer is not None
        with self._lock:
            if self._answerer is None:
                self._answerer = self._make_answerer(self.index, self.embedder)
            return self._answerer


def _source(hit: Hit) -> Source:
    return Source(hit.record.id, hit.score, hit.record.text, hit.record.metadata)
