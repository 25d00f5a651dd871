"""CloudEvents through a real uvicorn: query requests with replies, index-published hot reloads,
every status path, and the builder announcing new indexes to K_SINK. The content modes and
batches are in test_receiver.py."""

from __future__ import annotations

import json
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
    to_binary_event,
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent
from hypothesis import given, settings
from hypothesis import strategies as st

from functions.app import create_app
from functions.catalog import index_key
from functions.errors import InvalidEvent, UnsupportedEventFormat
from functions.events import (
    BATCH,
    INDEX_PUBLISHED,
    QUERY_REQUEST,
    QUERY_RESPONSE,
    STRUCTURED,
    Deduplicator,
    IncomingEvent,
    parse,
)
from functions.settings import Settings
from functions.storage import open_store

from .conftest import Ollama, Published, build_index, settings_for, write_corpus
from .servers import serve

QUERY = {"query": "facts about rivers", "mode": "retrieve", "top_k": 3}


@contextmanager
def function(settings: Settings) -> Iterator[httpx.Client]:
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        yield client


def ready(client: httpx.Client) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.02)
    return response.json()  # type: ignore[no-any-return]


def event(event_type: str = QUERY_REQUEST, data: Any = None, **attributes: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": event_type,
            "source": "tests/events",
            "id": attributes.pop("id", "ev-1"),
            **attributes,
        },
        QUERY if data is None else data,
    )


def send(
    client: httpx.Client,
    ce: CloudEvent,
    mode: str = "binary",
    prefer: str = "reply",
    drop: str | None = None,
) -> httpx.Response:
    message = (to_binary_event if mode == "binary" else to_structured_event)(ce)
    headers, body = dict(message.headers), message.body
    if drop and mode == "binary":
        headers.pop(f"ce-{drop}")
    elif drop:
        raw = json.loads(body)
        raw.pop(drop)
        body = json.dumps(raw).encode()
    return client.post("/events", content=body, headers={**headers, "Prefer": prefer})


def is_problem(response: httpx.Response, status: int) -> bool:
    return (
        response.status_code == status
        and response.headers["content-type"] == "application/problem+json"
    )


@pytest.mark.parametrize("mode", ["binary", "structured"])
def test_query_request_gets_a_reply_event(
    published: Published, ollama: Ollama, tmp_path: Path, mode: str
) -> None:
    settings = settings_for(
        published.store_uri, ollama, tmp_path, K_SERVICE="rag-query", K_REVISION="rag-query-00003"
    )
    with function(settings) as client:
        ready(client)
        expected = client.post("/query", json=QUERY).json()
        response = send(client, event(id=f"q-{mode}"), mode)
    assert response.status_code == 200
    assert response.headers["x-index-id"] == published.index_id
    reply = from_http_event(HTTPMessage(dict(response.headers), response.content))
    assert (reply.get_type(), reply.get_source(), reply.get_extension("correlationid")) == (
        QUERY_RESPONSE,
        "knative-rag/rag-query/rag-query-00003",
        f"q-{mode}",
    )
    assert reply.get_data() == expected


def test_no_reply_when_the_caller_asks_for_none(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        ready(client)
        response = send(client, event(), prefer="return=minimal")
    assert (response.status_code, response.json()) == (202, {"status": "answered"})


@pytest.mark.parametrize("mode", ["binary", "structured"])
@pytest.mark.parametrize("attribute", ["specversion", "id", "source", "type"])
def test_a_missing_required_attribute_is_400(
    published: Published, ollama: Ollama, tmp_path: Path, mode: str, attribute: str
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        ready(client)
        response = send(client, event(), mode, drop=attribute)
    assert is_problem(response, 400)
    assert attribute in response.json()["detail"]


@pytest.mark.parametrize(
    ("request_kwargs", "title"),
    [
        (
            {"content": b"{not json", "headers": {"content-type": "application/cloudevents+json"}},
            "Invalid CloudEvent",
        ),
        (
            {"content": b'{"query": "x"}', "headers": {"content-type": "application/json"}},
            "Invalid CloudEvent",
        ),
    ],
    ids=["malformed-structured", "plain-json"],
)
def test_malformed_events_are_400(
    published: Published, ollama: Ollama, tmp_path: Path, request_kwargs: dict[str, Any], title: str
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        ready(client)
        response = client.post("/events", **request_kwargs)
    assert is_problem(response, 400)
    assert response.json()["title"] == title


def test_unknown_type_and_bad_query_data_are_400(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        ready(client)
        unknown = send(client, event("com.example.something", id="u"))
        bad = send(client, event(data={"query": "", "top_k": 0}, id="b"))
    assert is_problem(unknown, 400)
    assert unknown.json()["title"] == "Unsupported event type"
    assert is_problem(bad, 400)
    assert "query, top_k" in bad.json()["detail"]


def test_not_ready_is_503_so_knative_retries(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    ollama.double.latency_s = 1.0  # the model check keeps the function loading for a second
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        response = send(client, event())
        assert is_problem(response, 503)
        assert response.headers["retry-after"] == "1"
        ollama.double.latency_s = 0.0
        ready(client)
        assert send(client, event()).status_code == 200  # the retry is not taken for a duplicate


def test_a_duplicate_is_processed_once(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(settings_for(published.store_uri, ollama, tmp_path)) as client:
        ready(client)
        first = send(client, event(id="dup"))
        embedded = len(ollama.double.embedded)
        second = send(client, event(id="dup"))
    assert (first.status_code, second.status_code) == (200, 202)
    assert second.json() == {"status": "duplicate: already handled"}
    assert len(ollama.double.embedded) == embedded


def test_a_pinned_revision_ignores_index_published(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function(
        settings_for(published.store_uri, ollama, tmp_path, index=published.index_id)
    ) as client:
        ready(client)
        response = send(
            client, event(INDEX_PUBLISHED, {"index_id": "x", "channel": "stable"}, id="p")
        )
        assert (response.status_code, response.json()) == (
            202,
            {"status": "ignored: this revision pins its index"},
        )
        assert ready(client)["reloads"] == {}


def test_reloads_swap_atomically_under_concurrent_queries(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path / "docs", documents=4)
    build_index(s3_uri, ollama, source)
    failures: list[int] = []
    served: set[str] = set()
    stop = threading.Event()
    with function(settings_for(s3_uri, ollama, tmp_path, llm_provider="none")) as client:
        ready(client)

        def hammer() -> None:
            with httpx.Client(base_url=str(client.base_url), timeout=30) as own:
                while not stop.is_set():
                    response = own.post("/query", json=QUERY)
                    if response.status_code != 200:
                        failures.append(response.status_code)
                    served.add(response.headers.get("x-index-id", ""))

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for thread in threads:
            thread.start()
        ids = []
        for n in range(3):
            (source / f"new-{n}.md").write_text(
                f"# Update {n}\n\nA new document number {n} about lakes.\n"
            )
            ids.append(build_index(s3_uri, ollama, source).index_id)
            assert (
                send(
                    client,
                    event(INDEX_PUBLISHED, {"index_id": ids[-1], "channel": "stable"}, id=f"r{n}"),
                ).status_code
                == 202
            )
            deadline = time.monotonic() + 30
            while ready(client)["index_id"] != ids[-1]:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        stop.set()
        for thread in threads:
            thread.join()
        assert ready(client)["reloads"] == {"succeeded": 3}
    assert failures == []
    assert set(ids) <= served
    # Each reload gave the replaced index's cached files back (the cache is memory on Knative).
    assert sorted(path.name for path in (tmp_path / "cache").iterdir()) == [ids[-1]]


def test_a_failed_reload_keeps_the_old_index(s3_uri: str, ollama: Ollama, tmp_path: Path) -> None:
    source = write_corpus(tmp_path / "docs", documents=3)
    first = build_index(s3_uri, ollama, source).index_id
    with function(settings_for(s3_uri, ollama, tmp_path, llm_provider="none")) as client:
        ready(client)
        (source / "more.md").write_text("# More\n\nAnother document.\n")
        second = build_index(s3_uri, ollama, source).index_id
        store = open_store(s3_uri)
        data = bytearray(store.get(index_key(second, "vectors.f32")).data)
        data[0] ^= 0xFF
        store.put(index_key(second, "vectors.f32"), bytes(data))
        assert (
            send(
                client, event(INDEX_PUBLISHED, {"index_id": second, "channel": "stable"}, id="bad")
            ).status_code
            == 202
        )
        deadline = time.monotonic() + 30
        while ready(client)["reloads"] != {"failed": 1}:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        response = client.post("/query", json=QUERY)
    assert (response.status_code, response.headers["x-index-id"]) == (200, first)


_text = st.text(st.characters(codec="ascii", exclude_categories=["Cc"]), max_size=20)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_attributes = st.fixed_dictionaries(
    {},
    optional={
        name: _json | _text
        for name in ("specversion", "id", "source", "type", "time", "data", "data_base64", "x1")
    },
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.dictionaries(
        st.sampled_from(
            ["ce-specversion", "ce-id", "ce-source", "ce-type", "content-type", "ce-time"]
        ),
        _text | st.sampled_from([STRUCTURED, BATCH, "application/cloudevents+xml"]),
    ),
    body=st.binary(max_size=200)
    | st.builds(json.dumps, _attributes | st.lists(_attributes, max_size=3)).map(str.encode),
)
def test_parse_either_returns_complete_events_or_refuses_with_a_reason(
    headers: dict[str, str], body: bytes
) -> None:
    try:
        parsed = parse(headers, body)
    except (InvalidEvent, UnsupportedEventFormat):
        return
    for event in parsed if isinstance(parsed, list) else [parsed]:
        assert isinstance(event, IncomingEvent)
        assert event.type
        assert event.source
        assert event.id


def _remember_long_ids(dedup: Deduplicator, count: int) -> None:
    for n in range(count):  # each id 65 KB, gone once remembered
        dedup.remember(IncomingEvent(INDEX_PUBLISHED, "tests/events", f"{n:06d}" + "x" * 65_000, 0))


def test_the_duplicate_cache_holds_16_bytes_an_event_whatever_its_id() -> None:
    dedup = Deduplicator(size=100)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        _remember_long_ids(dedup, 300)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024  # the ids themselves would be 6.5 MB
    assert (len(dedup), dedup.key_bytes) == (100, 1600)
    newest = IncomingEvent(INDEX_PUBLISHED, "tests/events", "000299" + "x" * 65_000, 0)
    oldest = IncomingEvent(INDEX_PUBLISHED, "tests/events", "000199" + "x" * 65_000, 0)
    assert (dedup.seen(newest), dedup.seen(oldest)) == (True, False)
    # (source, id) pairs that concatenate alike are still different events
    dedup.remember(IncomingEvent(INDEX_PUBLISHED, "ab", "c", 0))
    assert dedup.seen(IncomingEvent(INDEX_PUBLISHED, "a", "bc", 0)) is False
