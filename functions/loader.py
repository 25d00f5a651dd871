"""Loading the configured index once per process: resolve, fetch, verify, map, check the model.

The HTTP app starts the loader in a background thread so that ``/healthz`` answers at once and
``/readyz`` says 503 until the index is ready; the Lambda handler calls ``load`` at init. Either
way there is one load per process, and a failed load leaves a one-line reason, never a
half-loaded index.

Over 400 lines because it still holds both paths to a serving index, the cold start and the hot
reload, and the wiring of embedder and answerer; issue 15's composition root (one module that
reads the settings and wires store, backend, embedder and answerer) and one load path for both
take those out.
"""

from __future__ import annotations

import logging
import random
import shutil
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np

from .artifact import Manifest
from .catalog import fetch_artifact, is_index_id, read_manifest, read_pointer
from .embeddings import Embedder, make_embedder
from .errors import (
    ConfigurationError,
    IndexTooLarge,
    ModelMismatch,
    NotReady,
    RagError,
)
from .limits import AnswerLimits
from .search import SearchIndex
from .service import Answerer, Observer, QueryService
from .settings import Settings
from .storage import Store, open_store

__all__ = ["EmbedderFactory", "IndexLoader", "check_model", "index_budget", "memory_limit"]

logger = logging.getLogger(__name__)

EmbedderFactory = Callable[[str | None], Embedder]

MiB = 1024 * 1024
# What the process needs besides the index: Python, numpy, FastAPI, boto3 and, in answer mode,
# LlamaIndex (measured 428 MB RSS with a 461 MB index mapped, 520 MB in answer mode).
_PROCESS_OVERHEAD = 384 * MiB
# Cold-start retries: what may pass by itself (``RagError.transient``: the store or model server
# briefly unreachable, throttling, 5xx), not what will not (credentials, a missing channel or
# model, a corrupt index, a wrong model).
_RETRY_BASE_S = 0.25
_RETRY_CAP_S = 8.0
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def memory_limit(paths: tuple[Path, ...] = _CGROUP_LIMITS) -> int | None:
    """The container's memory limit in bytes, or None where there is none (or no cgroup)."""
    for path in paths:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        # v2 writes "max" for no limit, v1 a number near 2**63.
        if text == "max" or not text.isdigit() or int(text) >= 1 << 60:
            return None
        return int(text)
    return None


def index_budget(settings: Settings, *, follows_channel: bool, limit: int | None) -> int | None:
    """The largest index (bytes, all files) this process may load; None for no limit.

    Downloaded indexes live in the cache folder, which on Knative is a memory-backed emptyDir
    and counts against the container's memory limit; the files are then memory-mapped, so an
    index costs its size once. A channel-following revision holds two during a hot reload.
    """
    if settings.max_index_mb is not None:
        return settings.max_index_mb * MiB
    if limit is None:
        return None
    return max(limit - _PROCESS_OVERHEAD, 0) // (2 if follows_channel else 1)


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
    """Holds the one index this process serves, and why it is not ready when it is not."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Store | None = None,
        embedder_factory: EmbedderFactory | None = None,
        started_at: float | None = None,
    ) -> None:
        self.settings = settings
        self.follows_channel = not is_index_id(settings.index)
        self.started_at = started_at or time.time()
        self.ready_at: float | None = None
        self.attempts = 0  # cold-start load attempts (retries after transient failures)
        self._store = store
        self.observers: list[Observer] = []  # told of every model-server call (metrics)
        self.reloads: Counter[str] = Counter()  # hot reloads by outcome: succeeded, failed, ...
        # Hot reloads: one at a time, at most one more asked for meanwhile (see request_reload).
        self._reload_guard = threading.Lock()
        self._reload_phase: Literal["idle", "waiting", "reading"] = "idle"
        self._reload_again = False
        self._next_reload_at = 0.0  # time.monotonic() before which no reload starts
        self._refused: str | None = None  # manifest sha256 of the last index refused on reload
        self._embedder_factory = embedder_factory or self._default_embedder
        self.state: Literal["idle", "loading", "ready", "failed"] = "idle"
        self.reason: str | None = "index loading has not started"  # for logs: may name hosts
        self.public_reason: str | None = self.reason  # for /readyz and 503s: says no more than why
        self.service: QueryService | None = None
        # One for the process, shared by the services of successive indexes: the bound on LLM
        # answers in flight holds across hot reloads, and their model calls end by the
        # request's deadline.
        self.answer_limits = AnswerLimits(
            deadline_s=settings.request_timeout_s, concurrency=settings.llm_max_concurrency
        )
        self.timings: dict[str, float] = {}
        self.downloading = threading.Event()  # set once the data files are on their way (or failed)
        self.done = threading.Event()  # set once loading has succeeded or failed
        self._lock = threading.Lock()
        self.budget = index_budget(
            settings, follows_channel=self.follows_channel, limit=memory_limit()
        )

    def check_budget(self, manifest: Manifest) -> None:
        """Refuse an index whose files would not fit the memory budget, before fetching it."""
        size = sum(entry.size for entry in manifest.files.values())
        if self.budget is not None and size > self.budget:
            raise IndexTooLarge(
                f"index {manifest.index_id} is {size / MiB:.0f} MiB, more than the memory "
                f"budget of {self.budget / MiB:.0f} MiB (RAG_MAX_INDEX_MB or the memory limit)"
            )

    def _default_embedder(self, model: str | None) -> Embedder:
        settings = self.settings
        return make_embedder(
            settings.embed_provider,
            model,
            ollama_host=settings.ollama_host,
            batch_size=settings.embed_batch_size,
            queries=True,
        )

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
                "serving index %s (%d chunks): %s",
                service.index_id,
                len(service.index),
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
        """Load; while the store or the model server fails transiently, retry until the
        start-up deadline, with exponential backoff and full jitter (so that many cold starts
        do not retry in step)."""
        deadline = self.started_at + self.settings.startup_timeout_s
        while True:
            self.attempts += 1
            try:
                return self._load()
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

    def _load(self) -> QueryService:
        settings = self.settings
        if not settings.store_uri:
            raise ConfigurationError("RAG_STORE_URI is not set", public="RAG_STORE_URI is not set")
        step = time.perf_counter()
        store = self._store = self._store or open_store(
            settings.store_uri, download_concurrency=settings.download_concurrency
        )
        self.timings["store_client"] = time.perf_counter() - step
        # LlamaIndex (answer mode) is imported only after readiness, by the warm-up thread:
        # importing it here would hold the GIL the download threads need between chunks.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder") as pool:
            step = time.perf_counter()
            manifest = read_manifest(store, settings.index)
            self.check_budget(manifest)
            embedder_future = pool.submit(
                self._embedder_factory, settings.embed_model or manifest.embedding.model
            )
            self.downloading.set()
            artifact = fetch_artifact(store, manifest, settings.cache_dir)
            self.timings["fetch_and_verify"] = time.perf_counter() - step
            step = time.perf_counter()
            index = SearchIndex(artifact)
            self.timings["map"] = time.perf_counter() - step
            embedder = embedder_future.result()
        step = time.perf_counter()
        check_model(manifest, embedder, settings.probe_min_cosine)
        self.timings["model_check"] = time.perf_counter() - step
        return QueryService(
            index,
            embedder,
            make_answerer=self._answerer_factory(),
            observe=self._observe,
            limits=self.answer_limits,
        )

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
            self._next_reload_at = time.monotonic() + self.settings.reload_min_interval_s
            try:
                self._reload_once()
            finally:  # whatever happened, the next request must find a reload to join or start
                with self._reload_guard:
                    again = self._reload_again and sys.exc_info()[0] is None
                    self._reload_phase = "waiting" if again else "idle"

    def _reload_once(self) -> None:
        current, store, settings = self.service, self._store, self.settings
        if current is None or store is None:
            self.reloads["not_ready"] += 1
            return
        try:
            pointer = read_pointer(store, settings.index)
            if pointer.index_id == current.index_id:
                self.reloads["unchanged"] += 1
                return
            if pointer.manifest_sha256 == self._refused:  # indexes are immutable: still no
                self.reloads["skipped_refused"] += 1
                return
            manifest = read_manifest(store, settings.index, pointer=pointer)
            try:  # both checks need only the manifest: refuse before fetching any data file
                self.check_budget(manifest)
                model = settings.embed_model or manifest.embedding.model
                embedder = (
                    current.embedder
                    if model == current.embedder.model
                    else self._embedder_factory(model)
                )
                check_model(manifest, embedder, settings.probe_min_cosine)
            except (IndexTooLarge, ModelMismatch):
                self._refused = pointer.manifest_sha256
                raise
            index = SearchIndex(fetch_artifact(store, manifest, settings.cache_dir))
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
        service = QueryService(
            index,
            embedder,
            make_answerer=self._answerer_factory(),
            observe=self._observe,
            limits=self.answer_limits,
        )
        self.service = service  # one assignment: new requests see the new index, old ones finish
        was = current.index_id
        current.index.close()
        # Requests still on the old index keep their mappings; the cache (memory on Knative)
        # gets the space back once they finish. A local store's files are used in place and
        # have no copy in the cache.
        shutil.rmtree(settings.cache_dir / was, ignore_errors=True)
        del current  # this thread must not keep the old index alive while it warms the new one
        self.reloads["succeeded"] += 1
        self._warm(service)
        logger.info("reloaded: serving index %s (was %s)", service.index_id, was)

    def _observe(self, call: str, seconds: float, error: str | None) -> None:
        for observer in self.observers:
            observer(call, seconds, error)

    def _answerer_factory(self) -> Callable[[SearchIndex, Embedder], Answerer] | None:
        settings = self.settings
        if settings.llm_provider == "none":
            return None

        def make(index: SearchIndex, embedder: Embedder) -> Answerer:
            from .engine import LlamaAnswerer, ollama_llm

            llm = ollama_llm(
                settings.llm_model,
                settings.ollama_host,
                context_window=settings.llm_context_window,
                timeout_s=settings.llm_timeout_s,
                max_tokens=settings.llm_max_tokens,
            )
            return LlamaAnswerer(index, embedder, llm)

        return make
