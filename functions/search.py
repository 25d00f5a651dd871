"""Exact nearest-neighbour search over an artifact, with metadata filters.

Vectors are L2-normalised at build time, so cosine similarity is a matrix product; ``argpartition``
picks the top k without sorting every score. Filters are evaluated on each key's few distinct
values first and then applied to the int32 code column with ``np.isin``, so a filter costs one
pass over a small integer column, never a parse of metadata.

One exact query reads every vector, so memory bandwidth is the limit. All searches therefore run
on one worker thread that takes every query waiting and answers them with one matrix product —
eight concurrent queries read the matrix once, not eight times. It also keeps BLAS to a single
caller: OpenBLAS called from many threads at once oversubscribes the cores and collapses.
"""

from __future__ import annotations

import operator
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .artifact import Artifact, NodeRecord
from .errors import InvalidRequest, UnsupportedFilter

__all__ = ["Condition", "FilterGroup", "Hit", "SearchIndex", "equality_filter"]

_MAX_BATCH = 64

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda value, wanted: value in wanted,
    "nin": lambda value, wanted: value not in wanted,
}


@dataclass(frozen=True)
class Condition:
    """``metadata[key] <op> value``; rows without the key never match."""

    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class FilterGroup:
    """Conditions (or nested groups) combined with ``and`` / ``or``."""

    items: tuple[Condition | FilterGroup, ...]
    combine: Literal["and", "or"] = "and"


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk's row, its cosine similarity and its record."""

    row: int
    score: float
    record: NodeRecord


def equality_filter(filters: dict[str, Any]) -> FilterGroup | None:
    """The HTTP API's ``{"key": value}`` filters: every key must equal its value."""
    if not filters:
        return None
    return FilterGroup(tuple(Condition(key, "==", value) for key, value in filters.items()))


class SearchIndex:
    """Exact cosine search over an artifact's memory-mapped vectors, micro-batched."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.vectors = artifact.vectors
        self.dim = artifact.manifest.embedding.dim
        self._keys = {key: k for k, key in enumerate(artifact.columns)}
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()  # orders queueing against close()

    def __len__(self) -> int:
        return len(self.artifact)

    def search(
        self, query: npt.NDArray[np.float32], top_k: int, where: FilterGroup | None = None
    ) -> list[Hit]:
        """The ``top_k`` rows most similar to ``query`` among those ``where`` admits, best first."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise InvalidRequest(
                f"query vector has {query.shape[0]} dimensions, the index {self.dim}"
            )
        norm = float(np.sqrt(np.dot(query, query)))
        rows = np.flatnonzero(self.mask(where)) if where is not None else None
        job = _Job(query / norm if norm > 0 else query, top_k, rows, Future())
        with self._lock:
            queued = not self._closed
            if queued:
                self._queue.put(job)
                if self._worker is None:
                    self._worker = threading.Thread(target=self._work, name="search", daemon=True)
                    self._worker.start()
        if not queued:
            # A request that started before a hot reload finishes on the index it started with,
            # in its own thread: nothing keeps a closed index (and its memory) alive after it.
            self._answer([job])
        picked, scores = job.result.result()
        return [
            Hit(int(row), float(score), self.artifact.record(int(row)))
            for row, score in zip(picked, scores, strict=True)
        ]

    def close(self) -> None:
        """Stop the worker thread once it has answered what is queued; later searches on this
        index are answered in the caller's thread."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            if worker is None:
                return
            self._queue.put(None)  # behind every queued job: none is queued after it
        worker.join()

    def _work(self) -> None:
        while (job := self._queue.get()) is not None:
            batch = [job]
            while len(batch) < _MAX_BATCH:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(job)
            self._answer(batch)

    def _answer(self, batch: list[_Job]) -> None:
        plain = [job for job in batch if job.rows is None]
        try:
            if plain:
                scores = np.stack([job.query for job in plain]) @ self.vectors.T
                for job, row in zip(plain, scores, strict=True):
                    job.result.set_result(_top(row, job.top_k, None))
            for job in batch:
                if job.rows is not None:
                    job.result.set_result(
                        _top(self.vectors[job.rows] @ job.query, job.top_k, job.rows)
                    )
        except BaseException as exc:  # never leave a caller waiting
            for job in batch:
                if not job.result.done():
                    job.result.set_exception(exc)

    def mask(self, where: FilterGroup) -> npt.NDArray[np.bool_]:
        """The rows a filter admits."""
        masks = [
            self.mask(item) if isinstance(item, FilterGroup) else self._condition(item)
            for item in where.items
        ]
        if not masks:
            return np.ones(len(self), dtype=bool)
        reduce = np.logical_and if where.combine == "and" else np.logical_or
        return reduce.reduce(masks)  # type: ignore[no-any-return]

    def _condition(self, condition: Condition) -> npt.NDArray[np.bool_]:
        test = _OPS.get(condition.op)
        if test is None:
            raise UnsupportedFilter(f"filter operator {condition.op!r} is not supported")
        if condition.op in ("in", "nin") and not isinstance(condition.value, list | tuple):
            raise UnsupportedFilter(f"filter {condition.key!r} {condition.op} needs a list")
        k = self._keys.get(condition.key)
        if k is None:
            return np.zeros(len(self), dtype=bool)
        matching = [
            code
            for code, value in enumerate(self.artifact.columns[condition.key])
            if _safe(test, value, condition.value)
        ]
        return np.isin(self.artifact.codes[k], matching)


@dataclass(frozen=True)
class _Job:
    query: npt.NDArray[np.float32]
    top_k: int
    rows: npt.NDArray[np.intp] | None
    result: Future[tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]]


def _top(
    scores: npt.NDArray[np.float32], top_k: int, rows: npt.NDArray[np.intp] | None
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    k = min(top_k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.intp), np.empty(0, dtype=np.float32)
    best = np.argpartition(-scores, k - 1)[:k]
    best = best[np.argsort(-scores[best], kind="stable")]
    return (rows[best] if rows is not None else best), scores[best]


def _safe(test: Callable[[Any, Any], bool], value: Any, wanted: Any) -> bool:
    try:
        return bool(test(value, wanted))
    except TypeError:
        # Comparing a string with a number: that value does not match; it is not an error.
        return False
