"""End to end: an index built by the builder, published to moto's S3 over HTTP, served by the
query function under a real uvicorn, embedded and answered by the Ollama double over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from functions.app import create_app
from functions.catalog import index_key, read_manifest
from functions.settings import Settings
from functions.storage import open_store

from .conftest import Ollama, Published, build_index, settings_for
from .servers import serve


@contextmanager
def function(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def wait_ready(client: httpx.Client, timeout: float = 30) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = client.get("/readyz")
        if (
            response.status_code == 200
            or response.json().get("state") == "failed"
            or time.monotonic() > deadline
        ):
            return response
        time.sleep(0.02)


def is_problem(response: httpx.Response, status: int) -> bool:
    body = response.json()
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
        and body["status"] == status
        and {"type", "title", "detail"} <= set(body)
        and "Traceback" not in response.text
    )


def test_build_publish_start_ready_query(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    chunk = published.artifact.record(7)
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        ready = wait_ready(client)
        body = ready.json()
        assert (body["status"], body["index_id"]) == ("ready", published.index_id)
        assert set(body["timings_s"]) == {
            "locate",  # the channel's pointer and the manifest (the store client made first)
            "store_client",
            "fetch_and_verify",
            "map",
            "model_check",
            "load",
        }
        assert body["started_at"] <= body["ready_at"]
        response = client.post("/query", json={"query": chunk.text, "mode": "retrieve", "top_k": 3})
    assert response.status_code == 200
    assert response.headers["x-index-id"] == published.index_id
    body = response.json()
    assert (body["answer"], body["answer_type"], body["index_id"]) == (
        None,
        None,
        published.index_id,
    )
    assert len(body["sources"]) == 3
    assert body["sources"][0] == {
        "id": chunk.id,
        "score": pytest.approx(1.0, abs=1e-5),
        "text": chunk.text,
        "metadata": chunk.metadata,
    }


def test_answer_mode_sends_the_retrieved_context_to_the_llm(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    chunk = published.artifact.record(3)
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        response = client.post("/query", json={"query": chunk.text, "top_k": 2})
    body = response.json()
    assert response.status_code == 200, body
    assert body["answer_type"] == "generated"
    assert body["answer"].startswith("DOUBLE ANSWER")
    assert body["sources"][0]["id"] == chunk.id
    assert len(ollama.double.chats) == 1
    chat = ollama.double.chats[0]
    assert chat["model"] == "llama3.2"
    assert chat["options"]["num_ctx"] == 8192
    assert chunk.text in chat["messages"][-1]["content"]


def test_pinned_index_id_and_extractive_answers(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    chunk = published.artifact.record(0)
    settings = settings_for(
        published.store_uri, ollama, tmp_path, index=published.index_id, llm_provider="none"
    )
    with function(settings) as client:
        assert wait_ready(client).status_code == 200
        response = client.post("/query", json={"query": chunk.text, "mode": "answer", "top_k": 2})
    body = response.json()
    assert body["answer_type"] == "extractive"
    assert body["sources"][0]["id"] == chunk.id
    # Extractive: each sentence of the answer is one of the sources' (line wrapping undone).
    sources = " ".join(" ".join(s["text"].split()) for s in body["sources"])
    sentences = [s for s in body["answer"].split(". ") if s]
    assert len(sentences) == 3
    assert all(sentence.rstrip(".") in sources for sentence in sentences)
    assert ollama.double.chats == []


def test_filters_restrict_sources(published: Published, ollama: Ollama, tmp_path: Path) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        response = client.post(
            "/query",
            json={
                "query": "facts",
                "mode": "retrieve",
                "top_k": 50,
                "filters": {"source": "doc-2.md"},
            },
        )
    sources = response.json()["sources"]
    expected = [
        r
        for r in range(len(published.artifact))
        if published.artifact.record(r).doc_id == "doc-2.md"
    ]
    assert len(sources) == len(expected) > 1
    assert {s["metadata"]["source"] for s in sources} == {"doc-2.md"}


def test_not_ready_while_loading(published: Published, ollama: Ollama, tmp_path: Path) -> None:
    ollama.double.latency_s = 1.0  # the embedding-model check waits on the double
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        loading = client.get("/readyz")
        query = client.post("/query", json={"query": "x", "mode": "retrieve"})
        assert is_problem(loading, 503)
        assert loading.json()["state"] == "loading"
        assert is_problem(query, 503)
        assert query.headers["retry-after"] == "1"
        assert "x-index-id" not in query.headers
        assert wait_ready(client).status_code == 200


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"embed_model": "other-embed"}, "probe similarity"),
        ({"embed_model": "wide-embed"}, "makes 96-d vectors"),
        ({"index": "missing"}, "channel 'missing' does not exist (nothing published to it)"),
        ({"index": "20990101-000000-deadbeef"}, "does not exist"),
        ({"store_uri": None}, "RAG_STORE_URI is not set"),
    ],
    ids=["other-model", "other-dimension", "missing-channel", "missing-index", "no-store"],
)
def test_load_failures_keep_the_function_unready(
    published: Published, ollama: Ollama, tmp_path: Path, overrides: dict[str, object], reason: str
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path, **overrides)) as client:
        ready = wait_ready(client)
        query = client.post("/query", json={"query": "x"})
    assert is_problem(ready, 503)
    assert reason in ready.json()["detail"]
    assert ready.json()["state"] == "failed"
    assert is_problem(query, 503)
    assert reason in query.json()["detail"]


def test_corrupted_artifact_is_never_served(
    ollama: Ollama, s3_uri: str, corpus: Path, tmp_path: Path
) -> None:
    store = open_store(s3_uri)
    manifest = build_index(s3_uri, ollama, corpus)
    key = index_key(manifest.index_id, "vectors.f32")
    data = bytearray(store.get(key).data)
    data[100] ^= 0x01
    store.put(key, bytes(data))
    with function(settings_for(s3_uri, ollama, tmp_path)) as client:
        ready = wait_ready(client)
    assert is_problem(ready, 503)
    assert "vectors.f32: sha256" in ready.json()["detail"]
    assert not (tmp_path / "cache" / manifest.index_id).exists()
    assert read_manifest(store, "stable").index_id == manifest.index_id


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"query": ""},
        {"query": "x" * 5000},
        {"query": "x", "top_k": 0},
        {"query": "x", "top_k": 51},
        {"query": "x", "top_k": "many"},
        {"query": "x", "mode": "chat"},
        {"query": "x", "filters": {"a": {"nested": 1}}},
        {"query": "x", "filters": {str(i): i for i in range(17)}},
        {"query": "x", "unknown": 1},
        ["query"],
    ],
    ids=[
        "empty",
        "blank",
        "too-long",
        "top-k-0",
        "top-k-51",
        "top-k-str",
        "bad-mode",
        "nested-filter",
        "many-filters",
        "unknown-field",
        "array",
    ],
)
def test_invalid_requests_are_422_problems(
    published: Published, ollama: Ollama, tmp_path: Path, body: object
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        response = client.post("/query", json=body)
    assert is_problem(response, 422)
    assert response.json()["errors"]


def test_malformed_json_unknown_routes_and_methods(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        wait_ready(client)
        malformed = client.post(
            "/query", content=b'{"query": ', headers={"content-type": "application/json"}
        )
        missing = client.get("/nope")
        method = client.get("/query")
    assert is_problem(malformed, 422)
    assert is_problem(missing, 404)
    assert missing.headers["x-index-id"] == published.index_id
    assert is_problem(method, 405)


def test_a_query_past_its_deadline_is_504(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(
        settings_for(published.store_uri, ollama, tmp_path, request_timeout_s=0.5)
    ) as client:
        wait_ready(client)
        ollama.double.latency_s = 1.5  # the query's embedding takes longer than the deadline
        response = client.post("/query", json={"query": "x", "mode": "retrieve"})
    assert is_problem(response, 504)
    assert (response.json()["title"], response.headers["retry-after"]) == (
        "Request deadline exceeded",
        "1",
    )


@pytest.fixture(scope="module")
def served(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """One function, ready, for the tests that only send requests."""
    settings = settings_for(published.store_uri, _ollama_server, tmp_path_factory.mktemp("served"))
    with function(settings) as client:
        wait_ready(client)
        yield client


WRONG_METHODS = [
    ("GET", "/query", {"POST"}),
    ("PUT", "/query", {"POST"}),
    ("GET", "/chat", {"POST"}),
    ("DELETE", "/chat", {"POST"}),
    ("GET", "/events", {"POST"}),
    ("TRACE", "/events", {"POST"}),
    ("POST", "/healthz", {"GET"}),
    ("DELETE", "/readyz", {"GET"}),
    ("PUT", "/metrics", {"GET"}),
    ("POST", "/openapi.json", {"GET", "HEAD"}),
    ("POST", "/docs", {"GET", "HEAD"}),
]


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    WRONG_METHODS,
    ids=[f"{method}-{path.strip('/')}" for method, path, _ in WRONG_METHODS],
)
def test_a_wrong_method_is_405_with_the_allowed_ones(
    served: httpx.Client, method: str, path: str, allowed: set[str]
) -> None:
    """RFC 9110, section 15.5.6: a 405 MUST say in Allow which methods the resource takes."""
    response = served.request(method, path)
    assert (
        response.status_code,
        response.headers["content-type"],
        {m.strip() for m in response.headers.get("allow", "").split(",") if m.strip()},
        response.json(),
    ) == (
        405,
        "application/problem+json",
        allowed,
        {
            "type": "about:blank",
            "title": "Method Not Allowed",
            "status": 405,
            "detail": "Method Not Allowed",
        },
    )
