"""GET /metrics (parsed with prometheus-client's own parser), request ids, and the JSON access
log: one line per request at the edge, carrying the request id."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from functions.edge import pick_request_id
from functions.logs import JsonFormatter, Redactor, configure, request_id

from .conftest import Ollama, Published, function_env, settings_for
from .servers import function_process
from .test_app import function, wait_ready

ROOT = Path(__file__).resolve().parent.parent


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus exposition, by (name, sorted labels)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_count_requests_cold_start_index_and_upstream_calls(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(
        published.store_uri, ollama, tmp_path, K_REVISION="rag-query-00007", llm_model="missing"
    )
    with function(settings) as client:
        wait_ready(client)
        for _ in range(3):
            assert client.post("/query", json={"query": "rivers", "mode": "retrieve"}).is_success
        assert client.post("/query", json={"query": "rivers"}).status_code == 503  # no such LLM
        assert client.post("/query", json={"query": ""}).status_code == 422
        assert client.get("/nowhere").status_code == 404
        response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    got = samples(response.text)

    def value(name: str, **labels: str) -> float:
        return got[(name, tuple(sorted(labels.items())))]

    route = {"route": "/query", "method": "POST"}
    assert value("knative_rag_requests_total", status="200", **route) == 3
    assert value("knative_rag_requests_total", status="503", **route) == 1
    assert value("knative_rag_requests_total", status="422", **route) == 1
    assert value("knative_rag_requests_total", route="unmatched", method="GET", status="404") == 1
    assert value("knative_rag_request_duration_seconds_count", **route) == 5
    assert value("knative_rag_requests_in_flight") == 1  # this scrape
    assert value("knative_rag_ready") == 1
    manifest = published.artifact.manifest
    assert (
        value(
            "knative_rag_index_info",
            index_id=published.index_id,
            revision="rag-query-00007",
            embed_provider="ollama",
            embed_model="nomic-embed-text",
            format_version="2",
        )
        == 1
    )
    assert value("knative_rag_index_chunks") == manifest.counts.chunks
    for phase in ("download_and_verify", "map", "model_check", "load", "ready"):
        assert value("knative_rag_cold_start_seconds", phase=phase) > 0
    assert value("knative_rag_reloads_total", outcome="succeeded") == 0
    # 3 retrieve embeddings, and the one LlamaIndex made to retrieve for the failed answer
    assert value("knative_rag_upstream_duration_seconds_count", call="embed") == 4
    assert value("knative_rag_upstream_duration_seconds_count", call="llm") == 1
    assert value("knative_rag_upstream_errors_total", call="llm", error="UpstreamError") == 1


def test_metrics_need_the_api_key_when_keys_are_set(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, api_keys="metrics-key-123")
    with function(settings) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "metrics-key-123"}).is_success


def test_request_ids_come_from_the_caller_or_are_made() -> None:
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    assert pick_request_id({b"x-request-id": b"abc-123"}) == "abc-123"
    assert pick_request_id({b"traceparent": trace.encode()}) == "4bf92f3577b34da6a3ce929d0e0e4736"
    given = {b"x-request-id": b"req-1", b"traceparent": trace.encode()}
    assert pick_request_id(given) == "req-1"
    for bad in (b"", b"x" * 129, b"has space", b"new\nline"):
        made = pick_request_id({b"x-request-id": bad, b"traceparent": b"00-zz"})
        assert len(made) == 32
        assert made != pick_request_id({})


def test_every_response_carries_its_request_id(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        given = client.post(
            "/query", json={"query": "x", "mode": "retrieve"}, headers={"X-Request-Id": "r-42"}
        )
        made = client.post("/query", json={"query": ""})
    assert given.headers["x-request-id"] == "r-42"
    assert len(made.headers["x-request-id"]) == 32


def test_json_lines_carry_the_request_id_and_fields() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(Redactor(["secret-value-1"]))
    logger = logging.getLogger("tests.json")
    logger.propagate = False
    logger.addHandler(handler)
    token = request_id.set("r-7")
    try:
        logger.warning("key %s", "secret-value-1", extra={"http": {"status": 200}})
    finally:
        request_id.reset(token)
        logger.removeHandler(handler)
    entry = json.loads(stream.getvalue())
    assert set(entry) == {"time", "level", "logger", "message", "request_id", "http"}
    assert (entry["level"], entry["logger"], entry["request_id"]) == (
        "WARNING",
        "tests.json",
        "r-7",
    )
    assert entry["message"] == "key [REDACTED]"
    assert entry["http"] == {"status": 200}


def test_the_process_logs_one_json_line_per_request(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function_process(function_env(published.store_uri, ollama, tmp_path)) as running:
        body = {"query": "rivers", "mode": "retrieve"}
        running.client.post("/query", json=body, headers={"X-Request-Id": "req-one"})
        running.client.post("/query", json={"query": ""}, headers={"X-Request-Id": "req-two"})
    output = running.output
    lines = [json.loads(line) for line in output.splitlines()]  # every line is JSON
    access = [line for line in lines if line["logger"] == "functions.access"]
    assert [(a["request_id"], a["http"]["status"]) for a in access] == [
        ("req-one", 200),
        ("req-two", 422),
    ]
    assert access[0]["http"]["route"] == "/query"
    assert access[0]["http"]["index_id"] == published.index_id
    assert access[0]["http"]["duration_ms"] > 0
    assert any(line["message"].startswith("serving index ") for line in lines)
    assert not any(line["logger"] == "uvicorn.access" for line in lines)


@pytest.mark.parametrize(
    ("log_format", "json_lines"), [("json", True), ("text", False), ("auto", True)]
)
def test_log_format(log_format: str, json_lines: bool) -> None:
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        configure("INFO", log_format=log_format, replace=True)  # stderr is not a terminal here
        (handler,) = root.handlers
        assert isinstance(handler.formatter, JsonFormatter) == json_lines
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved:
            root.addHandler(handler)
        root.setLevel(level)
