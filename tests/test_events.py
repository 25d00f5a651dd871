"""CloudEvents through a real uvicorn: query requests with replies, index-published hot reloads,
the three content modes of the HTTP binding 1.0.2 (binary, structured, batched) with the spec's
own example messages, every status path, and the builder announcing new indexes to K_SINK."""

from __future__ import annotations

import base64
import json
import threading
import time
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
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.app import create_app
from functions.catalog import index_key, read_manifest
from functions.errors import InvalidEvent, UnsupportedEventFormat
from functions.events import (
    BATCH,
    INDEX_PUBLISHED,
    MAX_BATCH,
    QUERY_REQUEST,
    QUERY_RESPONSE,
    STRUCTURED,
    IncomingEvent,
    parse,
)
from functions.settings import Settings
from functions.storage import open_store
from index_builder.__main__ import main as builder

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


@contextmanager
def sink() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def collect(request: Request) -> Response:
        received.append(from_http_event(HTTPMessage(dict(request.headers), await request.body())))
        return Response(status_code=202)

    with serve(Starlette(routes=[Route("/", collect, methods=["POST"])])) as url:
        yield url, received


def build_to_stable(store_uri: str, source: Path) -> int:
    """``python -m index_builder build`` of ``source`` into a new channel ``stable``."""
    command = ["--store", store_uri, "build", "--source", str(source)]
    return builder([*command, "--channel", "stable", "--create-channel"])


@pytest.mark.usefixtures("ollama")
def test_the_builder_announces_new_indexes_to_k_sink(
    s3_uri: str,
    ollama: Ollama,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    (corpus / "ls.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00")  # not a document: skipped
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        assert build_to_stable(s3_uri, corpus) == 0
    index_id = capsys.readouterr().out.strip()
    (announced,) = received
    assert (announced.get_type(), announced.get_source()) == (
        INDEX_PUBLISHED,
        "knative-rag/index-builder",
    )
    data = announced.get_data()
    assert (data["index_id"], data["channel"]) == (index_id, "stable")
    # The build's counts and phases travel with the announcement, for dashboards and alerts.
    manifest = read_manifest(open_store(s3_uri), index_id)
    assert data["counts"] == manifest.counts.model_dump()
    assert data["bytes"] == sum(entry.size for entry in manifest.files.values())
    assert list(data["phases"]) == ["reading", "chunking", "embedding", "uploading"]
    assert data["phases"]["embedding"]["done"] == manifest.counts.embedded
    assert data["phases"]["uploading"]["unit"] == "B"
    assert data["phases"]["reading"]["done"] == 7  # files looked at
    assert data["skipped"] == {
        "files": 1,
        "first": [{"source": "ls.txt", "reason": "binary content (NUL bytes), not text"}],
    }


def test_an_unreachable_k_sink_does_not_fail_the_build(
    s3_uri: str,
    ollama: Ollama,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/")
    assert build_to_stable(s3_uri, corpus) == 0
    assert "warning: index.published not delivered to K_SINK" in capsys.readouterr().err


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


# The content modes (HTTP binding 1.0.2, section 3), on one function.


@pytest.fixture(scope="module")
def served(
    published: Published, _ollama_server: Ollama, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    settings = settings_for(
        published.store_uri, _ollama_server, tmp_path_factory.mktemp("modes"), llm_provider="none"
    )
    with function(settings) as client:
        ready(client)
        yield client


def structured(ce: CloudEvent) -> dict[str, Any]:
    return json.loads(to_structured_event(ce).body)  # type: ignore[no-any-return]


def post(client: httpx.Client, body: Any, content_type: str, **headers: str) -> httpx.Response:
    return client.post(
        "/events",
        content=json.dumps(body).encode(),
        headers={"content-type": content_type, **headers},
    )


def replies(response: httpx.Response) -> list[tuple[str, str, Any]]:
    """A batch reply's events: (type, correlationid, data) each."""
    return [(e["type"], e["correlationid"], e["data"]) for e in response.json()]


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+json",
        "Application/CloudEvents+JSON",
        "application/cloudevents+json; charset=utf-8",
        "APPLICATION/CLOUDEVENTS+JSON ; charset=UTF-8",
    ],
    ids=["lower-case", "mixed-case", "charset", "upper-case-charset"],
)
def test_structured_mode_whatever_the_case_and_parameters(
    served: httpx.Client, content_type: str
) -> None:
    """Media types are case-insensitive (RFC 9110, section 8.3.1) and may carry parameters."""
    event_id = "case-" + "".join(c for c in content_type if c.isalnum())
    response = post(served, structured(event(id=event_id)), content_type)
    assert (response.status_code, response.headers["ce-type"], response.headers["ce-id"]) == (
        200,
        QUERY_RESPONSE,
        f"{event_id}-response",
    )


def test_structured_mode_reads_the_event_from_the_body_not_header_copies(
    served: httpx.Client,
) -> None:
    """Section 3.2.3: a structured message MAY carry ce-* headers too; the body is the event."""
    body = structured(event(id="body-id"))
    response = post(served, body, STRUCTURED, **{"ce-id": "header-id", "ce-type": INDEX_PUBLISHED})
    assert (response.status_code, response.headers["ce-correlationid"]) == (200, "body-id")
    assert response.json() == served.post("/query", json=QUERY).json()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/cloudevents+xml",
        "application/cloudevents+avro",
        "Application/CloudEvents+Protobuf; charset=utf-8",
        "application/cloudevents",
        "application/cloudevents-batch+xml",
    ],
    ids=["xml", "avro", "protobuf-mixed-case", "no-format", "batch-xml"],
)
def test_a_cloudevents_format_it_cannot_read_is_415(
    served: httpx.Client, content_type: str
) -> None:
    """Section 3: a CloudEvents media type is structured (or batched) mode, never binary."""
    response = served.post("/events", content=b"<event/>", headers={"content-type": content_type})
    media = content_type.split(";")[0].lower()
    assert (
        response.status_code,
        response.headers["content-type"],
        response.headers["accept-post"],
        response.json(),
    ) == (
        415,
        "application/problem+json",
        f"{STRUCTURED}, {BATCH}, application/json",
        {
            "type": "about:blank",
            "title": "Unsupported CloudEvents format",
            "status": 415,
            "detail": f"{media} is not a CloudEvents format this function reads: send "
            f"{STRUCTURED}, a batch as {BATCH}, or binary mode",
        },
    )


# The JSON event format 1.0.2, section 3.2, and the HTTP binding, section 3.1.4: the specs'
# examples with this function's event types (and real base64 where they have a placeholder).
_SPEC = {"source": "/mycontext", "time": "2018-04-05T17:31:00Z"}
_EXTENSIONS = {"comexampleextension1": "value", "comexampleothervalue": 5}
SPEC_EXAMPLES: dict[str, tuple[dict[str, Any], int]] = {
    "json-object-data": (
        {
            "specversion": "1.0",
            "type": QUERY_REQUEST,
            **_SPEC,
            "subject": None,
            "id": "C234-1234-1234",
            **_EXTENSIONS,
            "datacontenttype": "application/json",
            "data": QUERY,
        },
        200,
    ),
    "xml-string-data": (
        {
            "specversion": "1.0",
            "type": INDEX_PUBLISHED,
            **_SPEC,
            "id": "B234-1234-1234",
            **_EXTENSIONS,
            "unsetextension": None,
            "datacontenttype": "application/xml",
            "data": '<much wow="xml"/>',
        },
        202,
    ),
    "binary-data": (
        {
            "specversion": "1.0",
            "type": INDEX_PUBLISHED,
            **_SPEC,
            "id": "A234-1234-1234",
            **_EXTENSIONS,
            "datacontenttype": "application/vnd.apache.thrift.binary",
            "data_base64": base64.b64encode(b"\x80\x01\x00\x01").decode(),
        },
        202,
    ),
    "string-data-is-no-query": (
        {
            "specversion": "1.0",
            "type": QUERY_REQUEST,
            **_SPEC,
            "subject": None,
            "id": "D234-1234-1234",
            **_EXTENSIONS,
            "data": "I'm just a string",
        },
        400,
    ),
}


@pytest.mark.parametrize(("body", "status"), list(SPEC_EXAMPLES.values()), ids=list(SPEC_EXAMPLES))
def test_the_json_format_examples(served: httpx.Client, body: dict[str, Any], status: int) -> None:
    structured_mode = post(served, body, STRUCTURED)
    batched = post(served, [{**body, "id": f"batched-{body['id']}"}], BATCH)
    assert (structured_mode.status_code, batched.status_code) == (
        status,
        200 if status < 300 else status,
    ), structured_mode.text


def test_the_http_binding_binary_example(served: httpx.Client) -> None:
    """Section 3.1.4, with this function's type and a /query body as the data."""
    response = served.post(
        "/events",
        content=json.dumps(QUERY).encode(),
        headers={
            "Host": "webhook.example.com",
            "ce-specversion": "1.0",
            "ce-type": QUERY_REQUEST,
            "ce-time": "2018-04-05T03:56:24Z",
            "ce-id": "1234-1234-1234",
            "ce-source": "/mycontext/subcontext",
            "Content-Type": "application/json; charset=utf-8",
        },
    )
    assert (response.status_code, response.headers["ce-correlationid"]) == (200, "1234-1234-1234")


def test_a_batch_gets_a_batch_of_the_replies_to_its_queries(served: httpx.Client) -> None:
    """Each member as if delivered alone: queries answered in order, an index-published event
    reloads, a duplicate gets nothing; a redelivery is all duplicates."""
    expected = served.post("/query", json=QUERY).json()
    other = {"query": "volcanoes", "mode": "retrieve", "top_k": 2}
    batch = [
        structured(event(id="b-1")),
        structured(event(INDEX_PUBLISHED, {"index_id": "x", "channel": "stable"}, id="b-2")),
        structured(event(data=other, id="b-3")),
        structured(event(id="b-1")),  # the first again: a duplicate
    ]
    response = post(served, batch, BATCH)
    assert (response.status_code, response.headers["content-type"]) == (200, BATCH)
    assert replies(response) == [
        (QUERY_RESPONSE, "b-1", expected),
        (QUERY_RESPONSE, "b-3", served.post("/query", json=other).json()),
    ]
    again = post(served, batch, BATCH)
    assert (again.status_code, again.json()) == (200, [])
    minimal = post(served, [structured(event(id="b-4"))], BATCH, Prefer="return=minimal")
    assert (minimal.status_code, minimal.json()) == (202, {"status": "handled"})


def test_an_empty_batch_gets_an_empty_batch(served: httpx.Client) -> None:
    """JSON format, section 4.3: "[]" is a valid batch, also in a request."""
    response = served.post("/events", content=b"[]", headers={"content-type": BATCH})
    assert (response.status_code, response.headers["content-type"], response.json()) == (
        200,
        BATCH,
        [],
    )


BAD_MEMBERS = {
    "no-id": ({"id": None}, "event 2 of the batch: CloudEvent lacks required attribute(s): id"),
    "unknown-type": (
        {"type": "com.example.someevent"},
        "event 2 of the batch: event type 'com.example.someevent' is not handled (use "
        f"{QUERY_REQUEST} or {INDEX_PUBLISHED})",
    ),
    "bad-query": (
        {"data": {"query": ""}},
        "event 2 of the batch: the query request's data is not a valid /query body: query",
    ),
    "not-an-object": (None, "event 2 of the batch: a structured CloudEvent must be a JSON object"),
}


@pytest.mark.parametrize(("change", "detail"), list(BAD_MEMBERS.values()), ids=list(BAD_MEMBERS))
def test_a_batch_with_a_bad_member_is_refused_whole(
    served: httpx.Client, change: dict[str, Any] | None, detail: str
) -> None:
    first = structured(event(id=f"whole-{sorted(change or {})}"))
    second = [] if change is None else {**structured(event(id="bad-member")), **change}
    response = post(served, [first, second], BATCH)
    assert (response.status_code, response.json()["detail"]) == (400, detail)
    # Nothing of it was handled: the first member alone is answered, not a duplicate.
    assert post(served, first, STRUCTURED).status_code == 200


def test_a_batch_over_the_limit_is_400(served: httpx.Client) -> None:
    batch = [structured(event(id=f"many-{n}")) for n in range(MAX_BATCH + 1)]
    response = post(served, batch, BATCH)
    assert (response.status_code, response.json()["detail"]) == (
        400,
        f"a batch holds at most {MAX_BATCH} events, not {MAX_BATCH + 1}",
    )


def test_a_failing_member_fails_the_batch_and_none_of_it_counts(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    """Retrieve mode works, the chat model is missing: the answer-mode member fails the batch
    with its 503, and the retrieve member before it is not remembered, so a redelivery (or
    the member alone) is answered."""
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_model="missing-llm")
    answer = {"query": "facts about rivers", "mode": "answer"}
    batch = [structured(event(id="ok")), structured(event(data=answer, id="fails"))]
    with function(settings) as client:
        ready(client)
        response = post(client, batch, BATCH)
        alone = post(client, batch[0], STRUCTURED)
    assert (response.status_code, response.headers["retry-after"], response.json()["title"]) == (
        503,
        "1",
        "Model server unavailable",
    )
    assert (alone.status_code, alone.headers["ce-correlationid"]) == (200, "ok")
