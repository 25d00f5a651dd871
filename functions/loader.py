"""Loading the configured index once per process: resolve, fetch, verify, map, check the model.

The HTTP app starts the loader in a background thread so that ``/healthz`` answers at once and
``/readyz`` says 503 until the index is ready; the Lambda handler calls ``load`` at init. Either
way there is one load per process, and a failed load leaves a one-line reason, never a
half-loaded index.

The loader manages the lifecycle only: one path (``_next``) makes the service for the index the
configured name names now, at the cold start and at every hot reload; where the vectors live is
the ``Backend``'s business (``backends``), and what reads the settings and wires backend, embedder
and answerer together is ``composition``.
"""

from __future__ import annotations

import logging
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import numpy as np

from .artifact import Manifest
from .backends import Backend, Searcher
from .catalog import is_index_id
from .embeddings import Embedder
from .errors import IndexTooLarge, ModelMismatch, NotReady, RagError
from .service import Observer, QueryService

__all__ = [
    "EmbedderFactory",
    "IndexLoader",
    "ServiceFactory",
    "check_model",
]

logger = logging.getLogger(__name__)

EmbedderFactory = Callable[[str | None], Embedder]
# The query service over an opened index: its searcher, its embedder, and whom to tell of each
# model-server call.
ServiceFactory = Callable[[Searcher, Embedder, Observer], QueryService]

# Cold-start retries: what may pass by itself (``RagError.transient``: the store or model server
# briefly unreachable, throttling, 5xx), not what will not (credentials, a missing channel or
# model, a corrupt index, a wrong model).
_RETRY_BASE_S = 0.25
_RETRY_CAP_S = 8.0


def check_model(manifest: Manifest, embedder: Embedder, min_cosine: float) -> float:
    """Embed the manifest's probe text; refuse a model whose vector is not the stored one."""
    expected = np.asarray(manifest.probe.vector, dtype=np.float32)
    actual = embedder.embed_query(manifest.probe.text)
    if actual.shape != expected.shape:
        raise ModelMismatch(
            f"{embedder.provider}/{embedder.model} makes {actual.shape[0]}-d vectors, index "
            f"{manifest.index_id} was built with {manifest.embedding.provider}/"
            f"{manifest.embedding.model} ({expected.shape[0]}-d)"
        )
    cosine = float(actual @ expected / max(float(np.linalg.norm(expected)), 1e-12))
    if cosine < min_cosine:
        raise ModelMismatch(
            f"probe similarity {cosine:.4f} < {min_cosine}: "
            f"{embedder.provider}/{embedder.model} is "
            f"not the model index {manifest.index_id} was built with "
            f"({manifest.embedding.provider}/{manifest.embedding.model})"
        )
    return cosine


class IndexLoader:
    """Holds the one index this process serves, and why it is not ready when it is not.

    ``name``: the channel to follow, or an index id to pin. The index comes from ``backend``; its
    embedder from ``embedder_factory`` (given the model: ``embed_model``, else the index's own),
    checked against the index's probe (``probe_min_cosine``); ``make_service`` makes the service.
    """

    def __init__(
        self,
        name: str,
        backend: Backend,
        embedder_factory: EmbedderFactory,
        make_service: ServiceFactory,
        *,
        embed_model: str | None = None,
        probe_min_cosine: float = 0.99,
        startup_timeout_s: float = 120.0,
        reload_min_interval_s: float = 1.0,
        started_at: float | None = None,
    ) -> None:
        self.name = name
        self.backend = backend
        self.follows_channel = not is_index_id(name)
        self.started_at = started_at or time.time()
        self.ready_at: float | None = None
        self.attempts = 0  # cold-start load attempts (retries after transient failures)
        self.observers: list[Observer] = []  # told of every model-server call (metrics)
        self.reloads: Counter[str] = Counter()  # hot reloads by outcome: succeeded, failed, ...
        # Hot reloads: one at a time, at most one more asked for meanwhile (see request_reload).
        self._reload_guard = threading.Lock()
        self._reload_phase: Literal["idle", "waiting", "reading"] = "idle"
        self._reload_again = False
        self._next_reload_at = 0.0  # time.monotonic() before which no reload starts
        self._refused: str | None = None  # manifest sha256 of the last index refused on reload
        self._embedder_factory = embedder_factory
        self._make_service = make_service
        self._embed_model = embed_model
        self._probe_min_cosine = probe_min_cosine
        self._startup_timeout_s = startup_timeout_s
        self._reload_min_interval_s = reload_min_interval_s
        self.state: Literal["idle", "loading", "ready", "failed"] = "idle"
        self.reason: str | None = "index loading has not started"  # for logs: may name hosts
        self.public_reason: str | None = self.reason  # for /readyz and 503s: says no more than why
        self.service: QueryService | None = None
        self.timings: dict[str, float] = {}
        self.downloading = threading.Event()  # set once the index is located (or failed)
        self.done = threading.Event()  # set once loading has succeeded or failed
        self._lock = threading.Lock()

    def start(self) -> threading.Thread | None:
        """Load in a background thread (once); returns the thread, or None if already started."""
        with self._lock:
            if self.state != "idle":
                return None
            self._set("loading", "index is loading")
        thread = threading.Thread(target=self._run, name="index-loader", daemon=True)
        thread.start()
        return thread

    def load(self) -> QueryService:
        """Load in this thread (once per process); raises the reason if loading fails."""
        with self._lock:
            if self.state == "idle":
                self._set("loading", "index is loading")
                run = True
            else:
                run = False
        if run:
            self._run()
        return self.require()

    def close(self) -> None:
        """The process stops serving: close the backend's connections."""
        self.backend.close()

    def require(self) -> QueryService:
        """The serving index, or ``NotReady`` with the reason."""
        if self.service is None:
            raise NotReady(self.public_reason or "index is not loaded")
        return self.service

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            service = self._load_with_retries()
        except RagError as exc:
            tries = f" (gave up after {self.attempts} attempts)" if self.attempts > 1 else ""
            self._set("failed", f"{exc.title}: {exc.message}{tries}", f"{exc.public}{tries}")
            logger.error("index load failed: %s", self.reason)
        except Exception as exc:
            self._set("failed", f"unexpected {type(exc).__name__} while loading")
            logger.exception("index load failed")
        else:
            self.timings["load"] = time.perf_counter() - started
            self.ready_at = time.time()
            self._set("ready", None)
            self.service = service  # assigned last: this is what makes the function ready
            # Answer mode's engine is built after readiness: retrieve mode never waits for it.
            threading.Thread(target=self._warm, args=(service,), name="warm", daemon=True).start()
            logger.info(
                "serving index %s (%d chunks, %s): %s",
                service.index_id,
                len(service.index),
                self.backend.name,
                ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items()),
            )
        finally:
            self.downloading.set()
            self.done.set()

    def _set(
        self,
        state: Literal["idle", "loading", "ready", "failed"],
        reason: str | None,
        public: str | None = None,
    ) -> None:
        self.state, self.reason, self.public_reason = state, reason, public or reason

    def _load_with_retries(self) -> QueryService:
        """Load; while the store, the search backend or the model server fails transiently,
        retry until the start-up deadline, with exponential backoff and full jitter (so that
        many cold starts do not retry in step)."""
        deadline = self.started_at + self._startup_timeout_s
        while True:
            self.attempts += 1
            try:
                service = self._next(None)
                assert service is not None  # with nothing serving, there is always a next
                return service
            except RagError as exc:
                if not exc.transient:
                    raise
                delay = random.uniform(0, min(_RETRY_CAP_S, _RETRY_BASE_S * 2**self.attempts))
                if time.time() + delay >= deadline:
                    raise
                retrying = f" (attempt {self.attempts}, retrying)"
                self._set("loading", f"{exc.title}: {exc.message}{retrying}", exc.public + retrying)
                logger.warning("index load: %s; retrying in %.1f s", self.reason, delay)
                self.downloading.set()  # nothing is downloading: let the server start meanwhile
                time.sleep(delay)

    @staticmethod
    def _warm(service: QueryService) -> None:
        try:
            service.warm()
        except Exception:  # the first answer request will meet and report the same error
            logger.exception("building the answer engine failed")

    def _next(self, current: QueryService | None) -> QueryService | None:
        """The service for the index the name names now: the one path of the cold start
        (``current`` None) and of every reload. None when that is the index ``current`` serves,
        or one refused before (indexes are immutable: still no).

        The embedding model is checked against the index's probe before the index is opened
        when the embedder is at hand (a reload with the same model: a refused index costs no
        download); otherwise the embedder is made while the index opens, and checked after.
        """
        timings = self.timings if current is None else {}
        step = time.perf_counter()
        located = self.backend.locate(self.name)
        # The store's client exists (its making is CPU work under the GIL): the web framework
        # may import while the manifest and the index are read.
        self.downloading.set()
        if current is not None:
            if located.index_id == current.index_id:
                self.reloads["unchanged"] += 1
                return None
            if located.manifest_sha256 is not None and located.manifest_sha256 == self._refused:
                self.reloads["skipped_refused"] += 1
                return None
        manifest = located.manifest or self.backend.describe(self.name, located)
        timings["locate"] = time.perf_counter() - step
        model = self._embed_model or manifest.embedding.model
        try:
            self.backend.admit(manifest)
            embedder = current.embedder if current and current.embedder.model == model else None
            if embedder is not None:
                self._check(manifest, embedder, timings)
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder") as pool:
                pending = pool.submit(self._embedder_factory, model) if embedder is None else None
                self.downloading.set()
                searcher = self.backend.open(manifest, timings)
                try:
                    if pending is not None:
                        embedder = pending.result()
                        self._check(manifest, embedder, timings)
                except BaseException:
                    self.backend.retire(searcher)
                    raise
        except (IndexTooLarge, ModelMismatch):
            self._refused = located.manifest_sha256
            raise
        assert embedder is not None
        return self._make_service(searcher, embedder, self._observe)

    def _check(self, manifest: Manifest, embedder: Embedder, timings: dict[str, float]) -> None:
        step = time.perf_counter()
        check_model(manifest, embedder, self._probe_min_cosine)
        timings["model_check"] = time.perf_counter() - step

    def request_reload(self) -> bool:
        """Load the channel's current index in the background and swap it in; False if pinned.

        Requests in flight finish on the index they started with. If the new index fails to
        download, verify or pass the model check, the old one keeps serving; the failure is
        logged and counted in ``reloads``. One reload runs at a time, no sooner than
        ``reload_min_interval_s`` after the last began; a request while one waits to start, or
        while one is due after the running one, is ``coalesced``; one while a reload reads
        makes one more follow. A burst costs at most two reloads, the last read after it.
        """
        if not self.follows_channel:
            return False
        with self._reload_guard:
            if self._reload_phase == "idle":
                self._reload_phase = "waiting"
            elif self._reload_phase == "reading" and not self._reload_again:
                self._reload_again = True
                return True
            else:
                self.reloads["coalesced"] += 1
                return True
        threading.Thread(target=self._reload_loop, name="reload", daemon=True).start()
        return True

    def _reload_loop(self) -> None:
        again = True
        while again:
            time.sleep(max(0.0, self._next_reload_at - time.monotonic()))
            with self._reload_guard:
                self._reload_phase, self._reload_again = "reading", False
            self._next_reload_at = time.monotonic() + self._reload_min_interval_s
            try:
                self._reload_once()
            finally:  # whatever happened, the next request must find a reload to join or start
                with self._reload_guard:
                    again = self._reload_again and sys.exc_info()[0] is None
                    self._reload_phase = "waiting" if again else "idle"

    def _reload_once(self) -> None:
        current = self.service
        if current is None:
            self.reloads["not_ready"] += 1
            return
        try:
            service = self._next(current)
        except RagError as exc:
            self.reloads["failed"] += 1
            logger.error(
                "reload failed, still serving %s: %s: %s", current.index_id, exc.title, exc.message
            )
            return
        except Exception:  # a full cache volume, a bug: the old index still serves
            self.reloads["failed"] += 1
            logger.exception("reload failed, still serving %s", current.index_id)
            return
        if service is None:
            return
        self.service = service  # one assignment: new requests see the new index, old ones finish
        was = current.index_id
        self.backend.retire(current.index)
        del current  # this thread must not keep the old index alive while it warms the new one
        self.reloads["succeeded"] += 1
        self._warm(service)
        logger.info("reloaded: serving index %s (was %s)", service.index_id, was)

    def _observe(self, call: str, seconds: float, error: str | None) -> None:
        for observer in self.observers:
            observer(call, seconds, error)
