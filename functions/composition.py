"""The composition root: the one place that reads the settings and wires the query function.

``compose(settings)`` makes the loader of a process: the backend where the vectors live
(``RAG_BACKEND``: the artifact from the object store, or Elasticsearch), the embedder of the
index's model, and the query service with its LLM answerer and the process's bound on answers in
flight. Everything below takes plain arguments; the entrypoints (``python -m functions``, the
ASGI app, the Lambda handler) call this and nothing else to get an index.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from .backends import ArtifactBackend, Backend, Searcher, require_store_uri
from .catalog import is_index_id
from .embeddings import Embedder, make_embedder
from .errors import ConfigurationError
from .limits import AnswerLimits
from .loader import EmbedderFactory, IndexLoader
from .service import Answerer, Observer, QueryService
from .settings import Settings
from .storage import Store, open_store

if TYPE_CHECKING:
    from llama_index.core.llms import LLM

__all__ = ["MiB", "compose", "index_budget", "memory_limit"]

MiB = 1024 * 1024
# What the process needs besides the index: Python, numpy, FastAPI, boto3 and, in answer mode,
# LlamaIndex (measured 428 MB RSS with a 461 MB index mapped, 520 MB in answer mode).
_PROCESS_OVERHEAD = 384 * MiB
_CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def compose(
    settings: Settings,
    *,
    store: Store | None = None,
    embedder_factory: EmbedderFactory | None = None,
    started_at: float | None = None,
) -> IndexLoader:
    """The loader of the index ``settings`` name, from the backend they choose.

    ``store`` and ``embedder_factory`` replace the ones the settings describe (tests)."""
    limits = AnswerLimits(
        deadline_s=settings.request_timeout_s, concurrency=settings.llm_max_concurrency
    )
    make_answerer = _answerer_factory(settings)

    def make_service(searcher: Searcher, embedder: Embedder, observe: Observer) -> QueryService:
        # One AnswerLimits for the process, shared by the services of successive indexes: the
        # bound on LLM answers in flight holds across hot reloads.
        return QueryService(
            searcher, embedder, make_answerer=make_answerer, observe=observe, limits=limits
        )

    return IndexLoader(
        settings.index,
        make_backend(settings, store=store),
        embedder_factory or _embedder_factory(settings),
        make_service,
        embed_model=settings.embed_model,
        probe_min_cosine=settings.probe_min_cosine,
        startup_timeout_s=settings.startup_timeout_s,
        reload_min_interval_s=settings.reload_min_interval_s,
        started_at=started_at,
    )


def make_backend(settings: Settings, *, store: Store | None = None) -> Backend:
    """The backend ``RAG_BACKEND`` names, configured."""
    if settings.backend == "elasticsearch":
        from .elastic import ElasticsearchBackend

        return ElasticsearchBackend.from_settings(settings)

    if settings.retrieval == "hybrid":
        raise ConfigurationError(
            "RAG_RETRIEVAL=hybrid needs RAG_BACKEND=elasticsearch: an artifact or a PostgreSQL "
            "table holds no text index to match words on"
        )
    if settings.backend == "postgres":
        from .postgres import PostgresBackend

        return PostgresBackend.from_settings(settings)

    def open_configured() -> Store:
        if store is not None:
            return store
        return open_store(
            require_store_uri(settings.store_uri),
            download_concurrency=settings.download_concurrency,
        )

    budget = index_budget(
        settings, follows_channel=not is_index_id(settings.index), limit=memory_limit()
    )
    return ArtifactBackend(
        open_configured,
        settings.cache_dir,
        budget=budget,
        on_demand=settings.on_demand == "auto",
        probes=settings.on_demand_probes,
        warm_search=settings.warm_search,
        warm_probes=settings.warm_probes,
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


def _embedder_factory(settings: Settings) -> EmbedderFactory:
    def make(model: str | None) -> Embedder:
        return make_embedder(
            settings.embed_provider,
            model,
            ollama_host=settings.ollama_host,
            batch_size=settings.embed_batch_size,
            queries=True,
        )

    return make


def _answerer_factory(settings: Settings) -> Callable[[Searcher, Embedder], Answerer] | None:
    if settings.llm_provider == "none":
        return None

    def make(index: Searcher, embedder: Embedder) -> Answerer:
        # LlamaIndex is imported here, after readiness (the warm-up thread), never on the
        # retrieve path.
        from .engine import LlamaAnswerer

        return LlamaAnswerer(index, embedder, configured_llm(settings))

    return make


def configured_llm(settings: Settings) -> LLM:
    """The Ollama LLM the settings name (``RAG_LLM_*``, ``OLLAMA_HOST``); imports LlamaIndex."""
    from .engine import ollama_llm

    return ollama_llm(
        settings.llm_model,
        settings.ollama_host,
        context_window=settings.llm_context_window,
        timeout_s=settings.llm_timeout_s,
        max_tokens=settings.llm_max_tokens,
    )
