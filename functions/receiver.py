"""The ``/events`` route: CloudEvents from Knative Eventing (or any sender), one or a batch.

    query.request    -> 200 and the reply event in binary mode (202, no reply, with
                        ``Prefer: return=minimal``)
    index.published  -> 202 and a background reload of the channel
    a batch          -> 200 and a batch of the replies to its query requests, in order

A batch is read whole first: one malformed member, or one of a type not handled, is a 400 that
names it, and nothing of the batch is handled. Then each member is handled as if delivered
alone, in order, within the request's one deadline; a member seen before (the same source and
id, earlier or in this batch) is skipped and gets no reply. If a member fails (not ready, past
the deadline, the model server down), the batch gets that member's problem and none of it is
remembered as handled, so a redelivery answers the whole batch again.

The OpenAPI description says what each mode takes. OpenAPI cannot make a header required for
one media type only, so the ``ce-*`` headers of binary mode are documented as optional header
parameters (ignored in structured and batch mode), and the request bodies documented are the
self-describing ones: one structured event, or a batch.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from .errors import DeadlineExceeded, InvalidEvent, InvalidRequest, UnsupportedEventType
from .events import (
    BATCH,
    INDEX_PUBLISHED,
    MAX_BATCH,
    QUERY_REQUEST,
    QUERY_RESPONSE,
    STRUCTURED,
    Deduplicator,
    IncomingEvent,
    parse,
    reply,
    reply_batch,
)
from .loader import IndexLoader
from .problems import problem_responses
from .schemas import EVENT_EXAMPLE, QUERY_RESPONSE_EXAMPLE, QueryRequest, QueryResponse

__all__ = ["COMPONENTS", "Answer", "add_events_route"]

Answer = Callable[[QueryRequest, float], Awaitable[QueryResponse]]
"""Answers a query request within a deadline (seconds), as ``POST /query`` does."""


def add_events_route(
    app: FastAPI, *, loader: IndexLoader, answer: Answer, source: str, timeout_s: float
) -> None:
    """Add ``POST /events``; replies name ``source``; one request has ``timeout_s`` in all."""
    dedup = Deduplicator()

    async def handle(event: IncomingEvent, query: QueryRequest | None, deadline: float) -> Any:
        """One event: the answer to a query request, or what became of an index-published."""
        if query is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise DeadlineExceeded(f"the batch ran past {timeout_s:g} s")
            return await answer(query, left)
        loader.require()  # still loading: 503, and Knative retries the event later
        return "reloading" if loader.request_reload() else "ignored: this revision pins its index"

    @app.post(
        "/events",
        status_code=202,
        summary="Knative Eventing: query requests (200 + reply event) and index-published events.",
        description=_DESCRIPTION,
        openapi_extra={"parameters": _PARAMETERS, "requestBody": _REQUEST_BODY},
        responses=_RESPONSES,
    )
    async def events(request: Request) -> Response:
        delivered = parse(request.headers, await request.body())
        minimal = "return=minimal" in request.headers.get("prefer", "").lower()
        deadline = time.monotonic() + timeout_s
        if isinstance(delivered, list):
            return await batch(delivered, minimal, deadline)
        query = _checked(delivered)
        if dedup.seen(delivered):
            # Delivered twice (Knative retries at least once): handled once already.
            return JSONResponse({"status": "duplicate: already handled"}, status_code=202)
        outcome = await handle(delivered, query, deadline)
        dedup.remember(delivered)
        if isinstance(outcome, str):
            return JSONResponse({"status": outcome}, status_code=202)
        headers = {"X-Index-Id": outcome.index_id}
        if minimal:
            return JSONResponse({"status": "answered"}, status_code=202, headers=headers)
        reply_headers, payload = reply(outcome.model_dump(mode="json"), delivered, source)
        return Response(payload, status_code=200, headers={**reply_headers, **headers})

    async def batch(events: list[IncomingEvent], minimal: bool, deadline: float) -> Response:
        checked = []
        for n, event in enumerate(events, 1):
            try:
                checked.append((event, _checked(event)))
            except InvalidRequest as exc:
                raise type(exc)(f"event {n} of the batch: {exc.message}") from exc
        answered: list[tuple[QueryResponse, IncomingEvent]] = []
        handled: dict[tuple[str, str], IncomingEvent] = {}
        for event, query in checked:
            if (event.source, event.id) in handled or dedup.seen(event):
                continue
            outcome = await handle(event, query, deadline)
            handled[(event.source, event.id)] = event
            if not isinstance(outcome, str):
                answered.append((outcome, event))
        for event in handled.values():  # only now: a failed batch is answered whole next time
            dedup.remember(event)
        headers = {"X-Index-Id": answered[-1][0].index_id} if answered else {}
        if minimal:
            return JSONResponse({"status": "handled"}, status_code=202, headers=headers)
        body = reply_batch([(a.model_dump(mode="json"), event) for a, event in answered], source)
        return Response(body, status_code=200, media_type=BATCH, headers=headers)


def _checked(event: IncomingEvent) -> QueryRequest | None:
    """The query a query request asks; None for an index-published event; else 400."""
    if event.type == INDEX_PUBLISHED:
        return None  # its data describes the new index; the channel pointer is the truth
    if event.type != QUERY_REQUEST:
        raise UnsupportedEventType(
            f"event type {event.type!r} is not handled (use {QUERY_REQUEST} or {INDEX_PUBLISHED})"
        )
    data = event.data
    try:
        if isinstance(data, bytes):  # binary mode: the body, whatever its declared type
            return QueryRequest.model_validate_json(data)
        if isinstance(data, dict):  # structured mode: the JSON object
            return QueryRequest.model_validate(data)
    except ValidationError as exc:
        fields = ", ".join(".".join(str(p) for p in e["loc"]) or "data" for e in exc.errors())
        raise InvalidEvent(
            f"the query request's data is not a valid /query body: {fields}"
        ) from exc
    raise InvalidEvent("the query request's data must be a JSON object, a /query body")


_DESCRIPTION = f"""\
CloudEvents 1.0 over HTTP (binding 1.0.2), in any of its three modes, chosen by `Content-Type`
(case-insensitive, parameters allowed):

- **binary**: the attributes in the `ce-specversion`, `ce-id`, `ce-source` and `ce-type`
  headers (all four required), the data as the body, e.g. `Content-Type: application/json` and
  a `/query` body;
- **structured**: `{STRUCTURED}`, one event as below (`ce-*` headers are ignored);
- **batch**: `{BATCH}`, a JSON array of at most {MAX_BATCH} such events.

Any other `application/cloudevents...` format is 415. A query request gets 200 with the reply
event `{QUERY_RESPONSE}` in binary mode (extension `correlationid` = the request's `id`), or
202 and no reply with `Prefer: return=minimal`; an index-published event gets 202 and a
background reload; an event seen before (same `source` and `id`) gets 202 and is not handled
again. A batch is checked whole first (one bad member: 400, nothing handled), then handled in
order, each member as if alone; it gets 200 and a batch of the replies to its query requests
(duplicates get none), or 202 with `Prefer: return=minimal`. If a member fails, the batch gets
that member's problem and none of it counts as handled, so a redelivery is answered whole.
"""

# The JSON event format: a null optional attribute is unset.
_ATTRIBUTES: dict[str, Any] = {
    "specversion": {"type": "string", "const": "1.0"},
    "id": {"type": "string", "minLength": 1, "description": "Unique per source."},
    "source": {"type": "string", "minLength": 1, "description": "A URI-reference."},
    "datacontenttype": {"type": ["string", "null"], "minLength": 1},
    "dataschema": {"type": ["string", "null"], "minLength": 1},
    "subject": {"type": ["string", "null"], "minLength": 1},
    "time": {"type": ["string", "null"], "format": "date-time"},
}
_EXTENSIONS: dict[str, Any] = {
    # Extension attributes: lower-case names; values of the CloudEvents types in JSON.
    "propertyNames": {"pattern": "^[a-z0-9]+$"},
    "additionalProperties": {
        "anyOf": [
            {"type": ["string", "boolean", "null"]},
            {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1},
        ]
    },
}
_INDEX_DATA_EXAMPLE = {"index_id": "20261127-081500-3f2a9c1d", "channel": "stable"}
_INDEX_EVENT_EXAMPLE = {
    "specversion": "1.0",
    "type": INDEX_PUBLISHED,
    "source": "knative-rag/index-builder",
    "id": "5f0e7d7c-3b1a-4f7e-9a55-2b8f0c6d1e2a",
    "datacontenttype": "application/json",
    "data": _INDEX_DATA_EXAMPLE,
}
_REPLY_EXAMPLE = {
    "specversion": "1.0",
    "type": QUERY_RESPONSE,
    "source": "knative-rag/rag-query/rag-query-00002",
    "id": f"{EVENT_EXAMPLE['id']}-response",
    "time": "2026-11-27T08:15:00.123456Z",
    "datacontenttype": "application/json",
    "correlationid": EVENT_EXAMPLE["id"],
    "data": QUERY_RESPONSE_EXAMPLE,
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


COMPONENTS: dict[str, Any] = {
    "CloudEvent": {
        "description": "One event in the CloudEvents JSON format: a query request or an "
        "index-published event.",
        "oneOf": [_ref("QueryRequestEvent"), _ref("IndexPublishedEvent")],
        "discriminator": {
            "propertyName": "type",
            "mapping": {
                QUERY_REQUEST: "#/components/schemas/QueryRequestEvent",
                INDEX_PUBLISHED: "#/components/schemas/IndexPublishedEvent",
            },
        },
    },
    "QueryRequestEvent": {
        "type": "object",
        "description": "A question; its data is a `/query` body (JSON, as `data`).",
        "required": ["specversion", "id", "source", "type", "data"],
        "properties": {
            **_ATTRIBUTES,
            "type": {"type": "string", "const": QUERY_REQUEST},
            "data": _ref("QueryRequest"),
        },
        **_EXTENSIONS,
        "examples": [EVENT_EXAMPLE],
    },
    "IndexPublishedEvent": {
        "type": "object",
        "description": "A new index on a channel: revisions following it reload it. The data "
        "(the builder's summary: index_id, channel, counts, phases...) is informational.",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            **_ATTRIBUTES,
            "type": {"type": "string", "const": INDEX_PUBLISHED},
            "data": {"description": "Informational.", "examples": [_INDEX_DATA_EXAMPLE]},
            "data_base64": {
                "type": ["string", "null"],
                "contentEncoding": "base64",
                "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            },
        },
        # data and data_base64 exclude each other (a null data_base64 is unset).
        "not": {
            "required": ["data", "data_base64"],
            "properties": {"data_base64": {"type": "string"}},
        },
        **_EXTENSIONS,
        "propertyNames": {"pattern": "^([a-z0-9]+|data_base64)$"},
        "examples": [_INDEX_EVENT_EXAMPLE],
    },
    "QueryResponseEvent": {
        "type": "object",
        "description": "The reply to a query request, in the JSON format (in a batch reply).",
        "required": ["specversion", "id", "source", "type", "correlationid", "data"],
        "properties": {
            **_ATTRIBUTES,
            "type": {"type": "string", "const": QUERY_RESPONSE},
            "correlationid": {"type": "string", "description": "The request's id."},
            "data": _ref("QueryResponse"),
        },
        "examples": [_REPLY_EXAMPLE],
    },
}


def _header(name: str, description: str, example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": {"type": "string"},
        "example": example,
    }


_BINARY = "Binary mode (required there, with the other three): "
_PARAMETERS = [
    _header("ce-specversion", _BINARY + "`1.0`. Ignored in structured and batch mode.", "1.0"),
    _header("ce-id", _BINARY + "the event's id, unique per source.", str(EVENT_EXAMPLE["id"])),
    _header("ce-source", _BINARY + "the event's source.", str(EVENT_EXAMPLE["source"])),
    _header("ce-type", _BINARY + f"`{QUERY_REQUEST}` or `{INDEX_PUBLISHED}`.", QUERY_REQUEST),
    _header("Prefer", "`return=minimal`: 202 and no reply event.", "return=minimal"),
]
_REQUEST_BODY = {
    "required": True,
    "content": {
        STRUCTURED: {"schema": _ref("CloudEvent"), "example": EVENT_EXAMPLE},
        BATCH: {
            "schema": {"type": "array", "maxItems": MAX_BATCH, "items": _ref("CloudEvent")},
            "example": [EVENT_EXAMPLE, _INDEX_EVENT_EXAMPLE],
        },
    },
}
_REPLY_HEADERS = {
    f"ce-{name}": {"description": f"Binary-mode reply: {what}.", "schema": {"type": "string"}}
    for name, what in [
        ("specversion", "`1.0`"),
        ("id", "the request's id + `-response`"),
        ("source", "`knative-rag/<K_SERVICE>/<K_REVISION>`"),
        ("type", f"`{QUERY_RESPONSE}`"),
        ("correlationid", "the request's id"),
        ("time", "when the reply was made"),
    ]
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A query request's reply event in binary mode (`ce-*` headers, the "
        "`/query` response as the body); to a batch, the replies to its query requests.",
        "headers": _REPLY_HEADERS,
        "content": {
            "application/json": {
                "schema": _ref("QueryResponse"),
                "example": QUERY_RESPONSE_EXAMPLE,
            },
            BATCH: {
                "schema": {"type": "array", "items": _ref("QueryResponseEvent")},
                "example": [_REPLY_EXAMPLE],
            },
        },
    },
    202: {
        "description": "Accepted, and what became of it: an index-published event (reloading, "
        "or ignored by a pinned revision), a query or a batch with `Prefer: return=minimal`, "
        "or a duplicate.",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {
                            "type": "string",
                            "enum": [
                                "reloading",
                                "ignored: this revision pins its index",
                                "answered",
                                "handled",
                                "duplicate: already handled",
                            ],
                        }
                    },
                },
                "example": {"status": "reloading"},
            }
        },
    },
    **problem_responses(400, 401, 403, 408, 413, 415, 500, 503, 504),
}
