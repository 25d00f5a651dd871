"""Prometheus metrics of one query function process (``GET /metrics``).

Each app has a registry of its own (several apps can live in one test process). What the loader
knows (the serving index, cold-start phases, hot reloads) is read at scrape time by a collector,
so it is never stale; what happens per request is counted as it happens:

    knative_rag_requests_total{route, method, status}            counter
    knative_rag_request_duration_seconds{route, method}          histogram
    knative_rag_requests_in_flight                               gauge
    knative_rag_upstream_duration_seconds{call}                  histogram  embed | search | llm
    knative_rag_upstream_errors_total{call, error}               counter
    knative_rag_cold_start_seconds{phase}                        gauge
    knative_rag_index_info{index_id, revision, embed_model, ...} gauge, 1 while serving
    knative_rag_index_chunks                                     gauge
    knative_rag_ready                                            gauge, 1 once ready
    knative_rag_reloads_total{outcome}                           counter
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from prometheus_client import Metric

    from .loader import IndexLoader

__all__ = ["Metrics"]

# Retrieval answers in milliseconds, LLM answers in seconds to minutes.
_REQUEST_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip
# Cold-start phases as the loader times them; "ready" is process start to ready.
_PHASES = {
    "imports": "imports",
    "store_client": "store_client",
    "locate": "locate",
    "fetch_and_verify": "download_and_verify",
    "map": "map",
    "model_check": "model_check",
    "load": "load",
}


class Metrics:
    """The registry and the instruments the app, the edge middleware and the loader feed."""

    def __init__(self, loader: IndexLoader, *, revision: str | None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "knative_rag_requests",
            "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "knative_rag_request_duration_seconds",
            "Time from the request's arrival to its response's last byte.",
            ["route", "method"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "knative_rag_requests_in_flight",
            "Requests being answered now.",
            registry=self.registry,
        )
        self.upstream = Histogram(
            "knative_rag_upstream_duration_seconds",
            "Calls to the model server: query embeddings (embed) and answers (llm); and the "
            "searches of retrieve mode and extractive answers (search: in memory for an "
            "artifact, a request for Elasticsearch).",
            ["call"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "knative_rag_upstream_errors",
            "Failed calls to the model server (and searches), by call and error.",
            ["call", "error"],
            registry=self.registry,
        )
        self.registry.register(_LoaderCollector(loader, revision))

    def observe_upstream(self, call: str, seconds: float, error: str | None) -> None:
        """One model-server call: its duration, and its error class if it failed."""
        self.upstream.labels(call).observe(seconds)
        if error is not None:
            self.upstream_errors.labels(call, error).inc()


class _LoaderCollector(Collector):
    """What the loader knows, read at each scrape."""

    def __init__(self, loader: IndexLoader, revision: str | None) -> None:
        self.loader = loader
        self.revision = revision or ""

    def collect(self) -> Iterator[Metric]:
        loader = self.loader
        service = loader.service
        ready = GaugeMetricFamily("knative_rag_ready", "1 once an index is being served.")
        ready.add_metric([], 1.0 if service is not None else 0.0)
        yield ready
        phases = GaugeMetricFamily(
            "knative_rag_cold_start_seconds",
            "Cold-start phases of this process (download_and_verify overlaps imports).",
            labels=["phase"],
        )
        for key, value in loader.timings.items():
            phases.add_metric([_PHASES.get(key, key)], value)
        if loader.ready_at is not None:
            phases.add_metric(["ready"], loader.ready_at - loader.started_at)
        yield phases
        info = GaugeMetricFamily(
            "knative_rag_index_info",
            "The index being served (1), with its identity.",
            labels=["index_id", "revision", "embed_provider", "embed_model", "format_version"],
        )
        chunks = GaugeMetricFamily("knative_rag_index_chunks", "Chunks in the served index.")
        if service is not None:
            manifest = service.manifest
            info.add_metric(
                [
                    manifest.index_id,
                    self.revision,
                    manifest.embedding.provider,
                    manifest.embedding.model,
                    str(manifest.format_version),
                ],
                1.0,
            )
            chunks.add_metric([], float(manifest.counts.chunks))
        yield info
        yield chunks
        on_demand = GaugeMetricFamily(
            "knative_rag_index_on_demand",
            "1 while the served index is answered by ranged reads of the store (it is still "
            "downloading), 0 once it is answered from memory.",
        )
        reads = CounterMetricFamily(
            "knative_rag_on_demand_reads",
            "Ranged GETs made by queries answered on demand, and their bytes.",
            labels=["unit"],
        )
        index = service.index if service is not None else None
        tier, cold = getattr(index, "tier", None), getattr(index, "cold", None)
        on_demand.add_metric([], 1.0 if tier == "on_demand" else 0.0)
        if cold is not None:
            reads.add_metric(["requests"], float(cold.gets))
            reads.add_metric(["bytes"], float(cold.bytes))
        yield on_demand
        yield reads
        reloads = CounterMetricFamily(
            "knative_rag_reloads", "Hot reloads by outcome.", labels=["outcome"]
        )
        for outcome in (
            "succeeded", "failed", "unchanged", "not_ready", "skipped_refused", "coalesced"
        ):  # fmt: skip
            reloads.add_metric([outcome], float(loader.reloads.get(outcome, 0)))
        yield reloads
