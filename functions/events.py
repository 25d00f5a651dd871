"""CloudEvents in and out: the only module that touches the ``cloudevents`` SDK (2.x core API).

    dev.knative-rag.query.request    data: a /query body   -> reply dev.knative-rag.query.response
    dev.knative-rag.index.published  data: {index_id, channel, manifest_sha256, ...} (builder)

Both HTTP modes are accepted (binary: ``ce-*`` headers; structured:
``application/cloudevents+json``).
The SDK fills in a missing ``id`` or ``specversion`` by itself, so the required attributes are
checked here, on the message as received; a missing one is ``InvalidEvent`` (400, which Knative
does not retry). Replies go out in binary mode.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_http_event, to_binary_event
from cloudevents.core.v1.event import CloudEvent

from .errors import InvalidEvent

__all__ = [
    "INDEX_PUBLISHED",
    "QUERY_REQUEST",
    "QUERY_RESPONSE",
    "Deduplicator",
    "IncomingEvent",
    "parse",
    "publish",
    "reply",
]

logger = logging.getLogger(__name__)

QUERY_REQUEST = "dev.knative-rag.query.request"
QUERY_RESPONSE = "dev.knative-rag.query.response"
INDEX_PUBLISHED = "dev.knative-rag.index.published"
_REQUIRED = ("specversion", "id", "source", "type")
_STRUCTURED = "application/cloudevents+json"


@dataclass(frozen=True)
class IncomingEvent:
    """The attributes this function acts on, and the event's data."""

    type: str
    source: str
    id: str
    data: Any


def parse(headers: Mapping[str, str], body: bytes) -> IncomingEvent:
    """Parse a binary- or structured-mode HTTP CloudEvent, refusing one that lacks an attribute."""
    lowered = {key.lower(): value for key, value in headers.items()}
    if lowered.get("content-type", "").split(";")[0].strip() == _STRUCTURED:
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise InvalidEvent(f"structured CloudEvent is not valid JSON: {exc}") from exc
        present = {name for name in _REQUIRED if isinstance(raw, dict) and raw.get(name)}
    else:
        present = {name for name in _REQUIRED if lowered.get(f"ce-{name}")}
    missing = [name for name in _REQUIRED if name not in present]
    if missing:
        raise InvalidEvent(f"CloudEvent lacks required attribute(s): {', '.join(missing)}")
    try:
        event = from_http_event(HTTPMessage(lowered, body))
    except Exception as exc:  # the SDK's validation and format errors
        raise InvalidEvent(f"not a valid CloudEvent: {exc}") from exc
    if event.get_specversion() != "1.0":
        raise InvalidEvent(f"CloudEvents specversion {event.get_specversion()!r} is not 1.0")
    return IncomingEvent(event.get_type(), event.get_source(), event.get_id(), event.get_data())


def reply(
    data: dict[str, Any], request: IncomingEvent, source: str
) -> tuple[dict[str, str], bytes]:
    """The binary-mode HTTP reply to a query request: headers and body."""
    event = CloudEvent(
        {
            "type": QUERY_RESPONSE,
            "source": source,
            "id": f"{request.id}-response",
            "datacontenttype": "application/json",
            "correlationid": request.id,
        },
        data,
    )
    message = to_binary_event(event)
    return dict(message.headers), message.body


def publish(
    sink: str, event_type: str, source: str, data: dict[str, Any], *, attempts: int = 4
) -> str | None:
    """POST one event to a sink (``K_SINK``), retrying with backoff; None on success, else why."""
    message = to_binary_event(
        CloudEvent(
            {"type": event_type, "source": source, "datacontenttype": "application/json"}, data
        )
    )
    if not sink.startswith(("http://", "https://")):
        return f"K_SINK {sink!r} is not an http(s) URL"
    reason = "not sent"
    for attempt in range(attempts):
        request = urllib.request.Request(  # noqa: S310 - the scheme is checked above
            sink, data=message.body, headers=message.headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - checked above
                if response.status < 300:
                    return None
                reason = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            reason = f"HTTP {exc.code}"
            if 400 <= exc.code < 500 and exc.code not in (404, 408, 409, 429):
                break  # the sink refuses this event; retrying will not help
        except (urllib.error.URLError, OSError) as exc:
            reason = str(getattr(exc, "reason", exc))
        time.sleep(min(0.2 * 2**attempt, 2.0))
    return reason


class Deduplicator:
    """The last ``size`` (source, id) pairs handled: Knative may deliver an event twice."""

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def seen(self, event: IncomingEvent) -> bool:
        """Whether this event was handled already."""
        with self._lock:
            return (event.source, event.id) in self._seen

    def remember(self, event: IncomingEvent) -> None:
        """Record a handled event, forgetting the oldest beyond the bound."""
        with self._lock:
            self._seen[(event.source, event.id)] = None
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)
