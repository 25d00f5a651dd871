"""One index, served on demand from the store until it has arrived, then from memory.

``TieredSearcher`` answers with the cold path (``cold``) from the moment the partition index's
head is read, and downloads the whole artifact in the background meanwhile. The download begins
once the first query has been answered (a function scaled from zero is woken by a request: that
request comes first), or ``warm_after_s`` after opening, whichever is sooner (the web server
may still be importing for a second or two after the index opened: the timer must not beat it).
When every file has arrived and matched the manifest, the in-memory search (exact, or by the
nearest partitions: ``search``) takes over by one assignment: a query already on the cold path
finishes there, every later one is answered from memory. Nothing pauses.

A query the cold path cannot answer (``NeedsWarm``: node or document ids, a filter that admits too
few rows near the query) waits for the download, up to ``wait_s``. If the download fails for good
(a corrupt file), such queries get that error; the cold path keeps answering the others, from
verified bytes, and the failure is logged. Transient store errors are retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .artifact import Manifest
from .cold import ColdIndex, NeedsWarm
from .errors import NotReady, RagError
from .filters import FilterGroup, Filters
from .search import Hit, SearchIndex, checked_query

__all__ = ["TieredSearcher"]

logger = logging.getLogger(__name__)

_RETRIES = 4
_RETRY_BASE_S = 0.5


class TieredSearcher:
    """An index answered on demand by ``cold`` until ``load_warm()`` has it in memory."""

    def __init__(
        self,
        cold: ColdIndex,
        load_warm: Callable[[], SearchIndex],
        timings: dict[str, float],
        *,
        warm_after_s: float = 5.0,
        wait_s: float = 60.0,
    ) -> None:
        self._cold = cold
        self._load_warm = load_warm
        self._timings = timings
        self._warm_after_s = warm_after_s
        self._wait_s = wait_s
        self._warm: SearchIndex | None = None
        self._failure: RagError | None = None
        self._filters: Filters | None = None
        self._begin = threading.Event()  # start the download now
        self._arrived = threading.Event()  # the download is over: warm, or failed
        self._closed = False
        self._on_closed: Callable[[], None] | None = None
        self._close_lock = threading.Lock()
        self._opened = time.perf_counter()
        self._thread = threading.Thread(target=self._download, name="warm-download", daemon=True)
        self._thread.start()

    @property
    def manifest(self) -> Manifest:
        """The index's manifest."""
        return self._cold.manifest

    @property
    def tier(self) -> Literal["on_demand", "memory"]:
        """Where queries are answered from now."""
        return "memory" if self._warm is not None else "on_demand"

    @property
    def mode(self) -> str:
        """How a query without filters is answered: ``on_demand``, then the index in memory's
        mode (``exact`` or ``partitions``)."""
        warm = self._warm
        return "on_demand" if warm is None else warm.mode

    @property
    def cold(self) -> ColdIndex:
        """The cold path (its reads are counted)."""
        return self._cold

    def __len__(self) -> int:
        return self.manifest.counts.chunks

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
        """As ``SearchIndex.search``: from memory once the index has arrived, before that from
        the store (see the module docstring)."""
        warm = self._warm
        if warm is not None:
            return warm.search(query, top_k, where, node_ids=node_ids, doc_ids=doc_ids)
        exact, norm = checked_query(query, self._cold.dim, top_k)
        try:
            if node_ids is not None or doc_ids is not None:
                raise NeedsWarm("node and document ids are read from the whole docstore")
            admitted = self._cold_mask(where) if where is not None else None
            hits = self._cold.search(exact, norm, top_k, admitted)
        except NeedsWarm:
            warm = self._wait()
            return warm.search(query, top_k, where, node_ids=node_ids, doc_ids=doc_ids)
        self._begin.set()
        return hits

    def vector_store(self) -> Any:
        """This index as a read-only LlamaIndex vector store (imports LlamaIndex)."""
        from .vector_store import ArtifactVectorStore

        return ArtifactVectorStore(self)

    def mask(self, where: FilterGroup) -> npt.NDArray[np.bool_]:
        """The rows a filter admits."""
        if self._warm is not None:
            return self._warm.mask(where)
        return self._cold_mask(where)

    def _cold_mask(self, where: FilterGroup) -> npt.NDArray[np.bool_]:
        """The rows a filter admits, from the filter columns read whole from the store."""
        if self._filters is None:
            self._filters = Filters(self._cold.columns())  # type: ignore[arg-type]
        return self._filters.mask(where)

    def wait_warm(self, timeout: float | None = None) -> bool:
        """Wait until the index is in memory (or the download failed); True if it is."""
        self._begin.set()
        self._arrived.wait(timeout)
        return self._warm is not None

    def _wait(self) -> SearchIndex:
        self._begin.set()
        if not self._arrived.wait(self._wait_s):
            raise NotReady("the index is still downloading; this query needs all of it")
        if self._warm is None:
            assert self._failure is not None
            raise self._failure
        return self._warm

    def _download(self) -> None:
        try:
            self._fetch()
        finally:
            self._arrived.set()
            with self._close_lock:
                then = self._on_closed if self._closed else None
                self._on_closed = None
            if then is not None:
                then()

    def _fetch(self) -> None:
        self._begin.wait(self._warm_after_s)
        began = time.perf_counter()
        for attempt in range(1, _RETRIES + 1):
            if self._closed:
                return
            try:
                warm = self._load_warm()
            except RagError as exc:
                if exc.transient and attempt < _RETRIES and not self._closed:
                    logger.warning("index download: %s; retrying", exc.message)
                    time.sleep(_RETRY_BASE_S * 2**attempt)
                    continue
                self._failure = exc
                if not self._closed:
                    logger.error(
                        "index %s did not arrive, answering on demand only: %s: %s",
                        self.manifest.index_id,
                        exc.title,
                        exc.message,
                    )
                return
            except Exception as exc:  # a full cache volume, a bug: say so, keep the cold path
                self._failure = RagError(f"the index download failed: {type(exc).__name__}")
                logger.exception("index %s did not arrive", self.manifest.index_id)
                return
            with self._close_lock:
                closed = self._closed
                if not closed:
                    self._warm = warm  # one assignment: later queries are answered from memory
            if closed:  # retired while it downloaded: never served
                warm.close()
                return
            self._timings["warm_download"] = time.perf_counter() - began
            self._timings["warm_after_open"] = time.perf_counter() - self._opened
            logger.info(
                "index %s is in memory: answering from memory (%.2f s after it opened)",
                self.manifest.index_id,
                self._timings["warm_after_open"],
            )
            self._cold.close()
            return

    def close(self, then: Callable[[], None] | None = None) -> None:
        """Stop serving. A download still running is finished and thrown away, in its own
        thread: ``then`` (freeing the files) runs once nothing writes them any more."""
        with self._close_lock:
            self._closed = True
            warm = self._warm
            running = self._thread.is_alive() and not self._arrived.is_set()
            if running:
                self._on_closed = then
        self._begin.set()
        if warm is not None:
            warm.close()
        self._cold.close()
        if not running and then is not None:
            then()
