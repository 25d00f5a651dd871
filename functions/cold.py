"""The cold path: answering from object storage, by ranged reads, before the index has arrived.

A cold start reads the partition index's head (``ivf``: centroids, partition bounds and hashes,
about 1 MB at 100k x 768), checked against the manifest. A query then reads the ``probes``
partitions whose centroids are nearest to it (int8 codes of their rows, checked against the
head), shortlists the ``candidates`` best rows by the int8 scores, and reads those rows' float32
vectors and records by ranged GETs, each checked against its digest in the partition. The
shortlist is ranked exactly as the in-memory search ranks (``search.rank``): a cold answer is the
warm answer wherever the warm top k are among the shortlisted rows, which the recall benchmark
measures (bench/cold_path.py). Partitions read are kept (up to ``cache_bytes``), so later queries
near the same topics read only rows and records.

Metadata filters need the filter columns, read whole (and verified) on the first filtered query;
the partitions are then probed, in order of their centroids, until the admitted rows among them
are at least k, up to four times ``probes``. A query the cold path cannot answer — restricted to
node or document ids, filtered on the document id, or admitting too few rows near the query —
raises ``NeedsWarm``: it waits for the index in memory (``tiered``).

Ranged reads run on one process-wide pool of threads (socket reads release the GIL), so that one
query's partitions, then its rows and records, arrive in two rounds of parallel GETs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from . import ivf
from .artifact import Manifest, NodeRecord, verify_file
from .catalog import index_key
from .errors import IntegrityError
from .search import Hit, rank
from .storage import Store

__all__ = ["ColdColumns", "ColdIndex", "NeedsWarm"]

_READ_THREADS = 64  # one wave of GETs for a shortlist of 2 x 10 rows and records, and more
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
T = TypeVar("T")


class NeedsWarm(Exception):
    """The cold path cannot answer this query well: it waits for the index in memory."""


def _reads() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(_READ_THREADS, thread_name_prefix="range")
        return _pool


def _parallel(tasks: Iterable[Callable[[], T]]) -> list[T]:
    futures = [_reads().submit(task) for task in tasks]
    return [future.result() for future in futures]


class ColdColumns:
    """The filter columns, read whole from the store, as ``filters.Filters`` reads an artifact's;
    the chunks' ids are not at hand (``NeedsWarm``)."""

    def __init__(self, manifest: Manifest, columns: bytes, codes: bytes) -> None:
        self.manifest = manifest
        n = manifest.counts.chunks
        self.columns: dict[str, list[Any]] = json.loads(columns)
        self.codes = np.frombuffer(codes, "<i4").reshape(len(self.columns), n)
        self._n = n

    def __len__(self) -> int:
        return self._n

    @property
    def complete_columns(self) -> bool:
        """As ``Artifact.complete_columns``."""
        return self.manifest.format_version >= 2

    def ids(self) -> tuple[list[str], list[str]]:
        """Every chunk's ids: only in the whole docstore, so not on the cold path."""
        raise NeedsWarm("chunk ids are read from the whole docstore")


class ColdIndex:
    """Top-k search by ranged reads of an index in the store (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        *,
        probes: int = 16,
        candidates: int = 2,
        cache_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.store = store
        self.manifest = manifest
        self.probes = max(1, probes)
        self.candidates = max(1, candidates)  # rows read exactly per hit asked for
        self.dim = manifest.embedding.dim
        self.head = ivf.Head.parse(self._whole(ivf.HEAD), rows=manifest.counts.chunks, dim=self.dim)
        self._cache_bytes = cache_bytes
        self._parts: OrderedDict[int, ivf.Partition] = OrderedDict()
        self._cached = 0
        self._lock = threading.Lock()
        self._columns: ColdColumns | None = None
        self.gets = 0  # ranged GETs made for queries (not counting the head and the columns)
        self.bytes = 0

    def __len__(self) -> int:
        return self.manifest.counts.chunks

    def _whole(self, name: str) -> bytes:
        """A whole data file, checked against the manifest block by block."""
        entry = self.manifest.files[name]
        data = self.store.read_range(index_key(self.manifest.index_id, name), 0, entry.size)
        size = entry.block_size
        blocks = [
            hashlib.sha256(data[at : at + size]).hexdigest() for at in range(0, len(data), size)
        ]
        verify_file(name, entry, len(data), blocks)
        return data

    def columns(self) -> ColdColumns:
        """The filter columns (read and verified on first use)."""
        if self._columns is None:
            names = ("columns.json", "columns.i32")
            data = _parallel([partial(self._whole, name) for name in names])
            self._columns = ColdColumns(self.manifest, *data)
        return self._columns

    def _read(self, name: str, start: int, end: int) -> bytes:
        data = self.store.read_range(index_key(self.manifest.index_id, name), start, end)
        with self._lock:
            self.gets += 1
            self.bytes += len(data)
        return data

    def _partitions(self, numbers: list[int]) -> list[ivf.Partition]:
        with self._lock:
            found = {p: self._parts[p] for p in numbers if p in self._parts}
            for p in found:
                self._parts.move_to_end(p)
        missing = [
            p for p in numbers if p not in found and self.head.span(p)[0] < self.head.span(p)[1]
        ]

        def fetch(p: int) -> ivf.Partition:
            data = self._read(ivf.PARTS, *self.head.span(p))
            return ivf.Partition.parse(
                data, dim=self.dim, expected_sha256=self.head.sha256[p], name=f"partition {p}"
            )

        for p, part in zip(missing, _parallel([partial(fetch, p) for p in missing]), strict=True):
            found[p] = part
            with self._lock:
                if p not in self._parts:
                    self._parts[p] = part
                    self._cached += part.nbytes
                while self._cached > self._cache_bytes and len(self._parts) > 1:
                    _, old = self._parts.popitem(last=False)
                    self._cached -= old.nbytes
        return [found[p] for p in numbers if p in found]

    def search(
        self,
        exact: npt.NDArray[np.float64],
        norm: float,
        top_k: int,
        admitted: npt.NDArray[np.bool_] | None = None,
    ) -> list[Hit]:
        """The ``top_k`` best rows among the shortlist of the nearest partitions (``admitted``:
        the rows a filter admits); ``NeedsWarm`` when a filter admits too few rows near the
        query."""
        query = (exact / norm).astype(np.float32)
        order = np.argsort(-(self.head.centroids @ query), kind="stable").tolist()
        limit = len(order) if admitted is None else min(len(order), 4 * self.probes)
        kept: list[tuple[ivf.Partition, npt.NDArray[np.intp]]] = []
        probed, found = 0, 0
        while probed < limit and (probed == 0 or found < top_k):
            batch = order[probed : min(limit, probed + self.probes)]
            probed += len(batch)
            for part in self._partitions(batch):
                keep = (
                    np.arange(len(part))
                    if admitted is None
                    else np.flatnonzero(admitted[part.rows])
                )
                kept.append((part, keep))
                found += keep.size
        if found < top_k and probed < len(order):
            raise NeedsWarm("the filter admits too few rows near the query")
        if not found:
            return []
        scores = np.concatenate([part.scores(query)[keep] for part, keep in kept])
        rows = np.concatenate([part.rows[keep] for part, keep in kept])
        docstore = np.concatenate([part.docstore[keep] for part, keep in kept])
        digests = np.concatenate([part.digests[keep] for part, keep in kept])
        take = min(found, self.candidates * top_k)
        picked = np.argpartition(-scores, take - 1)[:take] if take < found else np.arange(found)
        spans = {int(rows[i]): (docstore[i], digests[i]) for i in picked.tolist()}
        vectors, records = self._rows_and_records(spans)
        return rank(exact, list(spans), top_k, vectors.__getitem__, records.__getitem__)

    def _rows_and_records(
        self, spans: dict[int, tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint8]]]
    ) -> tuple[dict[int, npt.NDArray[np.float32]], dict[int, NodeRecord]]:
        """The float32 rows and the records of the shortlist, read in parallel and checked."""
        width = 4 * self.dim

        def vector(row: int) -> npt.NDArray[np.float32]:
            data = self._read("vectors.f32", row * width, (row + 1) * width)
            if ivf.digest(data) != spans[row][1][0].tobytes():
                raise IntegrityError(f"vectors.f32: row {row} does not match its digest")
            return np.frombuffer(data, "<f4")

        def record(row: int) -> NodeRecord:
            start, end = (int(x) for x in spans[row][0])
            data = self._read("docstore.jsonl", start, end)
            if ivf.digest(data) != spans[row][1][1].tobytes():
                raise IntegrityError(f"docstore.jsonl: record {row} does not match its digest")
            raw = json.loads(data)
            return NodeRecord(raw["id"], raw["doc_id"], raw["text"], raw["metadata"])

        rows = list(spans)
        tasks: list[Callable[[], Any]] = [partial(vector, r) for r in rows]
        tasks += [partial(record, r) for r in rows]
        done = _parallel(tasks)
        return dict(zip(rows, done[: len(rows)], strict=True)), dict(
            zip(rows, done[len(rows) :], strict=True)
        )

    def close(self) -> None:
        """Forget the partitions read."""
        with self._lock:
            self._parts.clear()
            self._cached = 0
