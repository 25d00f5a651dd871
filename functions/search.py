"""Exact nearest-neighbour search over an artifact, with metadata filters.

Vectors are L2-normalised at build time, so cosine similarity is a matrix product; ``partition``
finds the k-th best score without sorting every score. Filters (``filters``) are evaluated on each
key's few distinct values and mapped to chunks through an int32 code column, never by parsing
metadata. A top k below 1 and a zero query vector have no meaning and are refused.

The float32 product only shortlists: every row within its error bound of the k-th best score is
scored again exactly as LlamaIndex's ``SimpleVectorStore`` scores it (float64 cosine of the stored
vector and the query as given; a few microseconds a row, and the shortlist is usually the k rows
and a few), and the top k are ranked on those scores. That makes the ranking
independent of where a row sits in the matrix (BLAS kernels round rows differently: two copies of
a vector can get float32 scores one ulp apart) and equal to LlamaIndex's. Rows with equal scores
(copies of a vector) are ranked by node id, largest first: the k that LlamaIndex keeps are the k
largest (score, node id) pairs, so the same rows make the cut. LlamaIndex's order among them is
the array order of its heap, which depends on every other row; it is not reproduced.

One exact query reads every vector, so memory bandwidth is the limit. All searches therefore run
on one worker thread that takes every query waiting and answers them with one matrix product —
eight concurrent queries read the matrix once, not eight times. It also keeps BLAS to a single
caller: OpenBLAS called from many threads at once oversubscribes the cores and collapses.

A filtered query that admits at least ``_GATHER_BELOW`` of the rows joins that product, and the
rows it does not admit get the score -inf: the matrix is never copied. One that admits fewer
rows gathers them (a copy of those rows only) and scores them alone, which reads less. Either
way the shortlist holds the rows within the error margin of the k-th best admitted score, and
the exact second pass ranks them: the ranking does not depend on the path.

With ``probes`` (an artifact whose rows lie partition by partition: ``ivf`` layout 1), a query
without filters or ids is scored against the ``probes`` partitions whose centroids are nearest
to it, one slice of the mapped matrix each, instead of every row: it reads those pages only
(about probes / partitions of the matrix), and the same exact second pass ranks what they hold.
The answer is the exact one wherever the exact top k lie in those partitions, which
bench/cold_path.py measures (recall once warm). Filtered and id-restricted queries stay exact.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Collection
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .artifact import Artifact, Manifest, NodeRecord
from .errors import InvalidRequest
from .filters import FilterGroup, Filters

__all__ = ["Hit", "SearchIndex", "checked_query", "rank"]

_MAX_BATCH = 64
_PARSED_TIES = 256  # more rows tied than this: rank them with the cached id list
_UNIT_ROUNDOFF = 2.0**-24  # float32
# Below this share of admitted rows, gathering them costs less than the whole product (at 100k x
# 768 here: 1 % 0.4 ms, 5 % 3.5 ms, 10 % 6-12 ms, 20 % 18-32 ms, against 24 ms for every row;
# bench/filtered_search.py). The worker gathers for one query at a time: one copy at most.
_GATHER_BELOW = 0.1


def checked_query(
    query: npt.ArrayLike, dim: int, top_k: int
) -> tuple[npt.NDArray[np.float64], float]:
    """The query vector in float64 and its norm; refuses what has no meaning for any backend: a
    vector of another dimension than the index's, a zero or non-finite one (its cosine is
    undefined), a top k below 1."""
    exact = np.asarray(query, dtype=np.float64).reshape(-1)
    if exact.shape[0] != dim:
        raise InvalidRequest(f"query vector has {exact.shape[0]} dimensions, the index {dim}")
    norm = float(np.linalg.norm(exact)) if np.isfinite(exact).all() else np.inf
    if not 0 < norm < np.inf:
        raise InvalidRequest(
            "the query vector is zero or not finite: its cosine similarity is undefined"
        )
    if isinstance(top_k, bool) or top_k < 1:
        raise InvalidRequest(f"top_k must be at least 1, not {top_k!r}")
    return exact, norm


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk's row (-1 where the backend has no rows: Elasticsearch), its
    cosine similarity and its record."""

    row: int
    score: float
    record: NodeRecord


class SearchIndex:
    """Cosine search over an artifact's memory-mapped vectors, micro-batched: exact, or with
    ``probes`` over the nearest partitions (see the module docstring)."""

    def __init__(self, artifact: Artifact, *, probes: int | None = None) -> None:
        self.artifact = artifact
        self.vectors = artifact.vectors
        self.dim = artifact.manifest.embedding.dim
        self.filters = Filters(artifact)
        head = artifact.head
        starts = head.starts if head is not None else None
        # Score only the nearest ``probes`` partitions: where asked, and where they are slices.
        self.probes: int | None = None
        if probes and head is not None and starts is not None:
            self.probes = min(probes, head.nlist)
        self._centroids = head.centroids if head is not None else None
        self._starts = starts
        # |float32 score - exact cosine| <= (2 dim + 4) u for unit rows and query (dot product,
        # query rounding, row norm); twice that keeps every row that could make the exact top k.
        self._margin = (4 * self.dim + 16) * _UNIT_ROUNDOFF
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()  # orders queueing against close()

    def __len__(self) -> int:
        return len(self.artifact)

    @property
    def manifest(self) -> Manifest:
        """The artifact's manifest."""
        return self.artifact.manifest

    def vector_store(self) -> Any:
        """This index as a read-only LlamaIndex vector store (imports LlamaIndex)."""
        from .vector_store import ArtifactVectorStore

        return ArtifactVectorStore(self)

    def search(
        self,
        query: npt.ArrayLike,
        top_k: int,
        where: FilterGroup | None = None,
        *,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
        text: str | None = None,
    ) -> list[Hit]:
        """The ``top_k`` rows most similar to ``query`` among those ``where`` admits, best first;
        only chunks with one of ``node_ids`` and of ``doc_ids`` when given (empty: none).
        ``text`` (the question) is not used: the search is dense only."""
        exact, norm = checked_query(query, self.dim, top_k)
        scope = self.filters.scope(node_ids, doc_ids)
        admitted = self.filters.mask(where, scope) if where is not None else None
        if scope is not None:
            admitted = scope if admitted is None else admitted & scope
        rows = None
        if admitted is not None and int(np.count_nonzero(admitted)) < _GATHER_BELOW * len(self):
            rows, admitted = np.flatnonzero(admitted), None
        nearest = self.probes is not None and admitted is None and rows is None
        job = _Job(
            (exact / norm).astype(np.float32),
            top_k,
            admitted,
            rows,
            self._margin,
            Future(),
            nearest,
        )
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
        return self._ranked(exact, job.result.result(), top_k)

    def _ranked(
        self, exact: npt.NDArray[np.float64], shortlist: npt.NDArray[np.intp], top_k: int
    ) -> list[Hit]:
        return rank(
            exact,
            shortlist.tolist(),
            top_k,
            self.vectors.__getitem__,
            self.artifact.record,
            lambda: self.artifact.ids()[0],
        )

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

    @property
    def mode(self) -> str:
        """How a query without filters is scored: ``exact`` (every row) or ``partitions``."""
        return "exact" if self.probes is None else "partitions"

    def _answer(self, batch: list[_Job]) -> None:
        shared = [job for job in batch if job.rows is None and not job.nearest]
        nearest = [job for job in batch if job.nearest]
        try:
            if nearest:
                self._answer_nearest(nearest)
            if shared:
                scores = np.stack([job.query for job in shared]) @ self.vectors.T
                for job, row in zip(shared, scores, strict=True):
                    if job.admitted is not None:
                        np.copyto(row, -np.inf, where=~job.admitted)
                    job.result.set_result(_shortlist(row, job, None))
            for job in batch:
                if job.rows is not None:
                    job.result.set_result(
                        _shortlist(self.vectors[job.rows] @ job.query, job, job.rows)
                    )
        except BaseException as exc:  # never leave a caller waiting
            for job in batch:
                if not job.result.done():
                    job.result.set_exception(exc)

    def _answer_nearest(self, batch: list[_Job]) -> None:
        """Score each query against the slices of its nearest partitions only."""
        assert self.probes is not None
        assert self._centroids is not None
        assert self._starts is not None
        starts = self._starts
        near = np.stack([job.query for job in batch]) @ self._centroids.T
        nlist = near.shape[1]
        for job, row in zip(batch, near, strict=True):
            picked = (
                np.argpartition(-row, self.probes - 1)[: self.probes]
                if self.probes < nlist
                else np.arange(nlist)
            )
            spans: list[list[int]] = []
            for p in np.sort(picked).tolist():  # in row order; neighbours merge into one slice
                start, end = int(starts[p]), int(starts[p + 1])
                if start == end:
                    continue
                if spans and spans[-1][1] == start:
                    spans[-1][1] = end
                else:
                    spans.append([start, end])
            if not spans:
                job.result.set_result(np.empty(0, dtype=np.intp))
                continue
            scores = np.concatenate([self.vectors[s:e] @ job.query for s, e in spans])
            rows = np.concatenate([np.arange(s, e, dtype=np.intp) for s, e in spans])
            job.result.set_result(_shortlist(scores, job, rows))

    def mask(self, where: FilterGroup) -> npt.NDArray[np.bool_]:
        """The rows a filter admits."""
        return self.filters.mask(where)


def rank(
    exact: npt.NDArray[np.float64],
    shortlist: list[int],
    top_k: int,
    vector: Callable[[int], npt.NDArray[np.float32]],
    record: Callable[[int], NodeRecord],
    ids: Callable[[], list[str]] | None = None,
) -> list[Hit]:
    """The ``top_k`` best of the shortlisted rows, scored exactly (``vector``: a row's stored
    float32 vector), ties ranked by node id (``record``: a row's record; ``ids``: every row's
    node id, for ties of many rows where parsing each record would cost more)."""
    # LlamaIndex's similarity (base.embeddings.base.similarity), operation for operation, so
    # that equal scores are equal and close ones are ordered as there: np.dot(q, e) /
    # (norm(q) * norm(e)), with the stored row and the query as given, in float64.
    query_norm = np.linalg.norm(exact)
    scored = []
    for row in shortlist:
        stored = vector(row).astype(np.float64)
        norm = query_norm * np.linalg.norm(stored)
        scored.append((float(np.dot(exact, stored) / norm) if norm > 0 else 0.0, row))
    scored.sort(key=lambda pair: pair[0], reverse=True)
    records: dict[int, NodeRecord] = {}
    ranked: list[tuple[float, int]] = []
    start = 0
    while start < len(scored) and len(ranked) < top_k:
        end = start + 1
        while end < len(scored) and scored[end][0] == scored[start][0]:
            end += 1
        tied = scored[start:end]
        if len(tied) > 1:  # by node id, largest first: the ones LlamaIndex keeps at a cut
            if len(tied) > _PARSED_TIES and ids is not None:
                every = ids()
                tied.sort(key=lambda pair: every[pair[1]], reverse=True)
            else:
                records.update((row, record(row)) for _, row in tied)
                tied.sort(key=lambda pair: records[pair[1]].id, reverse=True)
        ranked.extend(tied)
        start = end
    return [Hit(row, score, records.get(row) or record(row)) for score, row in ranked[:top_k]]


@dataclass(frozen=True)
class _Job:
    query: npt.NDArray[np.float32]
    top_k: int
    admitted: npt.NDArray[np.bool_] | None  # scored with every row, the others masked out
    rows: npt.NDArray[np.intp] | None  # or only these rows scored (a copy of them)
    margin: float
    result: Future[npt.NDArray[np.intp]]
    nearest: bool = False  # scored against the nearest partitions only


def _shortlist(
    scores: npt.NDArray[np.float32], job: _Job, rows: npt.NDArray[np.intp] | None
) -> npt.NDArray[np.intp]:
    """The rows whose float32 score is within the error margin of the k-th best admitted one
    (masked rows score -inf and are never picked)."""
    size = scores.shape[0]
    n = size if job.admitted is None else int(np.count_nonzero(job.admitted))
    if n == 0:
        return np.empty(0, dtype=np.intp)
    k = min(job.top_k, n)
    kth = np.partition(scores, size - k)[size - k]
    picked: Any = np.flatnonzero(scores >= kth - job.margin)
    return rows[picked] if rows is not None else picked  # type: ignore[no-any-return]
