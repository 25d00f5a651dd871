"""API keys and limits, through a real uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from functions.app import create_app
from functions.errors import ConfigurationError
from functions.settings import Settings

from .conftest import Ollama, Published, settings_for
from .servers import serve

QUERY = {"query": "facts about rivers", "mode": "retrieve", "top_k": 2}


@contextmanager
def function(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        yield client


def is_problem(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
    )


def test_api_keys_guard_everything_but_health(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.write_text("from-file-key\n\n")
    settings = settings_for(
        published.store_uri, ollama, tmp_path, api_keys="k1, k2", api_keys_file=keys
    )
    with function(settings) as client:
        missing = client.post("/query", json=QUERY)
        wrong = client.post("/query", json=QUERY, headers={"Authorization": "Bearer nope"})
        bearer = client.post("/query", json=QUERY, headers={"Authorization": "Bearer k2"})
        header = client.post("/query", json=QUERY, headers={"X-API-Key": "from-file-key"})
        events = client.post(
            "/events", content=b"{}", headers={"content-type": "application/cloudevents+json"}
        )
        health = (client.get("/healthz").status_code, client.get("/readyz").status_code)
    assert is_problem(missing, 401)
    assert missing.headers["www-authenticate"] == 'Bearer realm="knative-rag"'
    assert is_problem(wrong, 401)
    assert wrong.headers["www-authenticate"] == 'Bearer realm="knative-rag", error="invalid_token"'
    assert "nope" not in wrong.text
    assert (bearer.status_code, header.status_code) == (200, 200)
    assert is_problem(events, 401)
    assert health == (200, 200)


def test_an_unreadable_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="RAG_API_KEYS_FILE"):
        create_app(Settings(api_keys_file=tmp_path / "missing"))


def test_without_keys_the_service_is_open_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="functions.app"):
        create_app(Settings())
    assert [r.getMessage() for r in caplog.records] == [
        "no API key configured (RAG_API_KEYS, RAG_API_KEYS_FILE): the service is open"
    ]


def test_oversized_bodies_are_413_whether_declared_or_chunked(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, max_body_bytes=2048)
    big = b'{"query": "' + b"x" * 5000 + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 512):
            yield big[start : start + 512]

    with function(settings) as client:
        declared = client.post("/query", content=big, headers={"content-type": "application/json"})
        chunked = client.post(
            "/query", content=chunks(), headers={"content-type": "application/json"}
        )
        event = client.post(
            "/events", content=chunks(), headers={"content-type": "application/cloudevents+json"}
        )
        fine = client.post("/query", json=QUERY)
    assert is_problem(declared, 413)
    assert "transfer-encoding" not in declared.request.headers
    assert chunked.request.headers["transfer-encoding"] == "chunked"
    assert is_problem(chunked, 413)
    assert is_problem(event, 413)
    assert fine.status_code == 200


def test_over_the_concurrency_limit_requests_are_refused_at_once(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    settings = settings_for(published.store_uri, ollama, tmp_path, max_concurrency=2)
    with function(settings) as client:
        ollama.double.latency_s = 1.0  # each query's embedding now takes a second
        slow: list[int] = []

        def query() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                slow.append(own.post("/query", json=QUERY).status_code)

        threads = [threading.Thread(target=query) for _ in range(2)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)
        refused = client.post("/query", json=QUERY)
        healthy = client.get("/readyz").status_code
        for thread in threads:
            thread.join()
    assert is_problem(refused, 503)
    assert refused.headers["retry-after"] == "1"
    assert healthy == 200  # probes are never counted or refused
    assert slow == [200, 200]


UNSUPPORTED = {
    "type": "about:blank",
    "title": "Unsupported Media Type",
    "status": 415,
    "detail": "the request body must be JSON: Content-Type: application/json",
}


@pytest.fixture(scope="module")
def open_function(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    """One function without keys, retrieve and extractive answers only, for the module."""
    cache = tmp_path_factory.mktemp("open")
    with function(
        settings_for(published.store_uri, _ollama_server, cache, llm_provider="none")
    ) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "content_type", "status"),
    [
        ("/query", "application/x-www-form-urlencoded", 415),  # what curl -d sends
        ("/query", "text/plain", 415),
        ("/query", "text/plain; charset=utf-8", 415),
        ("/query", None, 415),
        ("/query", "application/jsonx", 415),
        ("/query", "multipart/form-data; boundary=x", 415),
        ("/chat", "application/x-www-form-urlencoded", 415),
        ("/query", "application/json", 200),
        ("/query", "Application/JSON; charset=UTF-8", 200),
        ("/query", "application/vnd.api+json", 200),
        ("/chat", "application/json; charset=utf-8", 200),
    ],
    ids=[
        "form", "text", "text-charset", "missing", "jsonx", "multipart", "chat-form",
        "json", "json-params", "plus-json", "chat-json",
    ],
)  # fmt: skip
def test_bodies_that_are_not_json_are_415(
    open_function: httpx.Client, path: str, content_type: str | None, status: int
) -> None:
    body = (
        {"query": "facts about rivers", "mode": "retrieve"}
        if path == "/query"
        else {"messages": [{"role": "user", "content": "rivers?"}]}
    )
    headers = {"content-type": content_type} if content_type else {}
    response = open_function.post(path, content=json.dumps(body).encode(), headers=headers)
    assert response.request.headers.get("content-type") == content_type
    if status == 200:
        assert response.status_code == 200, response.text
        return
    assert (
        response.status_code,
        response.headers["content-type"],
        response.headers["accept-post"],
        response.json(),
    ) == (415, "application/problem+json", "application/json", UNSUPPORTED)


def test_events_take_any_media_type(open_function: httpx.Client) -> None:
    """A binary-mode CloudEvent carries the event's own content type: not the JSON guard's."""
    response = open_function.post(
        "/events",
        content=json.dumps({"query": "rivers", "mode": "retrieve"}).encode(),
        headers={
            "content-type": "text/plain",
            "ce-specversion": "1.0",
            "ce-id": "media-type-1",
            "ce-source": "tests/guards",
            "ce-type": "dev.knative-rag.query.request",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["ce-type"] == "dev.knative-rag.query.response"


def _slow_request(url: str, *, drip: bool) -> socket.socket:
    """A POST /query whose head is whole and whose body has begun: 10 of 100 bytes."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /query HTTP/1.1\r\nHost: function\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"query": '
    )
    if drip:  # a byte every 0.4 s: never a pause long enough for the idle deadline

        def dripping() -> None:
            try:
                for _ in range(20):
                    time.sleep(0.4)
                    sock.send(b" ")
            except OSError:
                pass  # closed: what the test waits for

        threading.Thread(target=dripping, daemon=True).start()
    return sock


def _read_to_close(sock: socket.socket) -> tuple[bytes, float]:
    """Everything until the server closes the connection, and how long that took."""
    started = time.monotonic()
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received, time.monotonic() - started


@pytest.mark.parametrize(
    ("drip", "detail", "deadline_s"),
    [
        (False, "the request body paused for more than 1 s", 1.0),
        (True, "the request body did not arrive within 3 s", 3.0),
    ],
    ids=["stalled", "dripping"],
)
def test_slow_bodies_take_no_slot_and_get_408_then_the_connection_closes(
    published: Published,
    ollama: Ollama,
    tmp_path: Path,
    drip: bool,
    detail: str,
    deadline_s: float,
) -> None:
    settings = settings_for(
        published.store_uri,
        ollama,
        tmp_path,
        llm_provider="none",
        max_concurrency=1,
        body_timeout_s=3,
        body_idle_timeout_s=1,
    )
    with function(settings) as client:
        slow = [_slow_request(str(client.base_url), drip=drip) for _ in range(3)]
        # Three bodies still arriving and one slot: the slot is free for a whole request.
        fine = client.post("/query", json=QUERY)
        answers = [_read_to_close(sock) for sock in slow]
        for sock in slow:
            sock.close()
    assert fine.status_code == 200  # its body was read, then replayed to the app
    for received, seconds in answers:
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.split(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout"
        assert b"\r\nconnection: close" in head.lower()
        assert json.loads(body) == {
            "type": "about:blank",
            "title": "Request Timeout",
            "status": 408,
            "detail": detail,
        }
        assert seconds < deadline_s + 2.0


def test_with_keys_readyz_shows_its_figures_to_key_holders_only(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    """The probe needs the status and an operator the index id; the timings and reload counts
    (also in /metrics, behind the key) need a key. Without keys, the service is open anyway."""
    settings = settings_for(
        published.store_uri, ollama, tmp_path, llm_provider="none", api_keys="ready-key-1"
    )
    with function(settings) as client:
        anonymous = client.get("/readyz")
        wrong = client.get("/readyz", headers={"X-API-Key": "not-the-key"})
        keyed = client.get("/readyz", headers={"Authorization": "Bearer ready-key-1"})
    with function(settings_for(published.store_uri, ollama, tmp_path, llm_provider="none")) as c:
        open_ = c.get("/readyz")
    summary = {"status": "ready", "index_id": published.index_id}
    assert (anonymous.status_code, anonymous.json()) == (200, summary)
    assert (wrong.status_code, wrong.json()) == (200, summary)
    figures = {"started_at", "ready_at", "timings_s", "reloads", "search"}
    assert (keyed.status_code, set(keyed.json())) == (200, set(summary) | figures)
    assert (open_.status_code, set(open_.json())) == (200, set(summary) | figures)
