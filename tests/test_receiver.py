"""POST /events (functions/receiver.py) in the HTTP binding's three content modes: the CloudEvents
specs' own examples, formats it cannot read, and batches."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings.http import (
    to_structured_event,
)
from cloudevents.core.v1.event import CloudEvent

from functions.events import (
    BATCH,
    INDEX_PUBLISHED,
    MAX_BATCH,
    QUERY_REQUEST,
    QUERY_RESPONSE,
    STRUCTURED,
)

from .conftest import Ollama, Published, settings_for
from .test_events import QUERY, event, function, ready

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


# Bodies nested deeper than Python's stack: 400, never a 500 and an ERROR log.

_DEEP = b"[" * 30_000 + b"]" * 30_000
_DEEP_EVENT = (
    b'{"specversion": "1.0", "id": "deep", "source": "tests", "type": "'
    + QUERY_REQUEST.encode()
    + b'", "data": '
    + _DEEP
    + b"}"
)
NESTED = {
    "structured": ("/events", STRUCTURED, _DEEP, {}, "Invalid CloudEvent"),
    "structured-data": ("/events", STRUCTURED, _DEEP_EVENT, {}, "Invalid CloudEvent"),
    "batch": ("/events", BATCH, b"[" + _DEEP_EVENT + b"]", {}, "Invalid CloudEvent"),
    "binary": (
        "/events",
        "application/json",
        b'{"query": "x", "filters": ' + _DEEP + b"}",
        {"ce-specversion": "1.0", "ce-id": "deep", "ce-source": "tests", "ce-type": QUERY_REQUEST},
        "Invalid CloudEvent",
    ),
    "query": ("/query", "application/json", b'{"query": "x", "filters": ' + _DEEP + b"}", {}, None),
}


@pytest.mark.parametrize(
    ("path", "content_type", "body", "headers", "title"), list(NESTED.values()), ids=list(NESTED)
)
def test_json_nested_30000_deep_is_400(
    served: httpx.Client,
    caplog: pytest.LogCaptureFixture,
    path: str,
    content_type: str,
    body: bytes,
    headers: dict[str, str],
    title: str | None,
) -> None:
    with caplog.at_level("ERROR"):
        response = served.post(
            path, content=body, headers={"content-type": content_type, **headers}
        )
    assert (
        response.status_code,
        response.headers["content-type"],
        response.json()["title"],
    ) == (400, "application/problem+json", title or "Bad Request")
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


@pytest.mark.parametrize(
    ("mode", "attribute", "length", "status"),
    [
        ("structured", "id", 1024, 200),
        ("structured", "id", 1025, 400),
        ("structured", "id", 65_000, 400),
        ("structured", "source", 1025, 400),
        ("batch", "id", 1025, 400),
        ("binary", "source", 1025, 400),
    ],
    ids=["id-1024", "id-1025", "id-65000", "source-1025", "batch-id-1025", "binary-source-1025"],
)
def test_ids_and_sources_over_1024_characters_are_400(
    served: httpx.Client, mode: str, attribute: str, length: int, status: int
) -> None:
    member = {**structured(event(id="long")), attribute: "l" * length}
    if mode == "binary":
        headers = {f"ce-{name}": str(member[name]) for name in ("specversion", "id", "source")}
        response = served.post(
            "/events",
            content=json.dumps(QUERY).encode(),
            headers={**headers, "ce-type": QUERY_REQUEST, "content-type": "application/json"},
        )
    else:
        response = post(
            served,
            [member] if mode == "batch" else member,
            BATCH if mode == "batch" else STRUCTURED,
        )
    assert response.status_code == status, response.text
    if status == 400:
        where = "event 1 of the batch: " if mode == "batch" else ""
        assert response.json()["detail"] == (
            f"{where}attribute {attribute} is {length} characters long; this function accepts "
            "at most 1024"
        )
