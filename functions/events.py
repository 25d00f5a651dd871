"""CloudEvents in and out: the only module that touches the ``cloudevents`` SDK (2.x core API).

    dev.knative-rag.query.request    data: a /query body   -> reply dev.knative-rag.query.response
    dev.knative-rag.index.published  data: {index_id, channel, manifest_sha256, ...} (builder)
    dev.knative-rag.index.promotion-refused  data: {index_id, channel, serving, quality, ...}
                                     (builder; the quality gate kept the channel: not taken here)

The content mode is the Content-Type's, case-insensitively and whatever its parameters, as the
HTTP binding (1.0.2, section 3) says: ``application/cloudevents-batch+json`` is a batch (JSON
Batch Format), ``application/cloudevents+json`` one structured event, any other
``application/cloudevents...`` a format this function cannot read (``UnsupportedEventFormat``,
415), anything else binary mode (``ce-*`` headers, the data as the body). In structured mode
the ``ce-*`` headers, which the binding allows as copies, are ignored: the body is the event.

The SDK fills in a missing ``id`` or ``specversion`` by itself and reads any ``ce-*`` header as
binary mode, so the mode and the attributes are checked here, on the message as received: a
missing or malformed one is ``InvalidEvent`` (400, which Knative does not retry). Replies go out
in binary mode, or as a batch to a batch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cloudevents.core.base import BaseCloudEvent
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_binary,
    to_binary_event,
)
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from .errors import InvalidEvent, UnsupportedEventFormat

__all__ = [
    "ACCEPTED_MEDIA_TYPES",
    "BATCH",
    "INDEX_PROMOTION_REFUSED",
    "INDEX_PUBLISHED",
    "MAX_BATCH",
    "MAX_ID_SOURCE_CHARS",
    "QUERY_REQUEST",
    "QUERY_RESPONSE",
    "STRUCTURED",
    "Deduplicator",
    "IncomingEvent",
    "parse",
    "publish",
    "reply",
    "reply_batch",
]

logger = logging.getLogger(__name__)

QUERY_REQUEST = "dev.knative-rag.query.request"
QUERY_RESPONSE = "dev.knative-rag.query.response"
INDEX_PUBLISHED = "dev.knative-rag.index.published"
# A build's index published but its channel left where it was: the quality gate refused it.
INDEX_PROMOTION_REFUSED = "dev.knative-rag.index.promotion-refused"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
# What a POST to /events may carry (Accept-Post of a 415): binary mode takes the data's own type.
ACCEPTED_MEDIA_TYPES = f"{STRUCTURED}, {BATCH}, application/json"
MAX_BATCH = 16  # events in one batch: the receiver's choice (binding, section 3)
_REQUIRED = ("specversion", "id", "source", "type")
_STRINGS = frozenset({*_REQUIRED, "datacontenttype", "dataschema", "subject"})
_EXTENSION_NAME = re.compile(r"[a-z0-9]+")
_TIMESTAMP = re.compile(  # RFC 3339 date-time, the JSON format's Timestamp
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_INT32 = 2**31
# The spec sets no length for id or source (only that consumers SHOULD accept events of at least
# 64 KiB whole, and attribute names of at most 20 characters): this is ours, ample for UUIDs,
# counters and URIs, and bounds what one event puts in memory and in logs.
MAX_ID_SOURCE_CHARS = 1024
_DIGEST_BYTES = 16


@dataclass(frozen=True)
class IncomingEvent:
    """The attributes this function acts on, and the event's data: the body's bytes in binary
    mode, the JSON value of ``data`` (None if absent) in structured mode."""

    type: str
    source: str
    id: str
    data: Any


def parse(headers: Mapping[str, str], body: bytes) -> IncomingEvent | list[IncomingEvent]:
    """Parse an HTTP CloudEvent: one event (binary or structured mode), or a list (a batch).

    In binary mode the data is the body's bytes; in structured mode, the JSON value of ``data``.
    """
    try:
        return _parse(headers, body)
    except RecursionError as exc:  # JSON nested deeper than Python's stack
        raise InvalidEvent("the CloudEvent is nested too deeply to read") from exc


def _parse(headers: Mapping[str, str], body: bytes) -> IncomingEvent | list[IncomingEvent]:
    lowered = {key.lower(): value for key, value in headers.items()}
    media = lowered.get("content-type", "").split(";", 1)[0].strip().lower()
    if media.startswith("application/cloudevents"):  # "-batch" too: the binding's prefix rule
        if media not in (STRUCTURED, BATCH):
            raise UnsupportedEventFormat(
                f"{media} is not a CloudEvents format this function reads: send "
                f"{STRUCTURED}, a batch as {BATCH}, or binary mode"
            )
        try:
            raw = json.loads(body)
        except ValueError as exc:
            raise InvalidEvent(f"the CloudEvent body is not valid JSON: {exc}") from exc
        if media == STRUCTURED:
            return _structured(raw)
        if not isinstance(raw, list):
            raise InvalidEvent("a CloudEvents batch must be a JSON array of events")
        if len(raw) > MAX_BATCH:
            raise InvalidEvent(f"a batch holds at most {MAX_BATCH} events, not {len(raw)}")
        return [_structured(item, f"event {n} of the batch: ") for n, item in enumerate(raw, 1)]
    missing = [name for name in _REQUIRED if not lowered.get(f"ce-{name}")]
    if missing:
        raise InvalidEvent(
            f"CloudEvent lacks required attribute(s): {', '.join(missing)} (binary mode: "
            f"ce-* headers; structured mode: Content-Type {STRUCTURED})"
        )
    try:
        event = from_binary(HTTPMessage(lowered, body), JSONFormat())
    except Exception as exc:  # the SDK's validation and format errors
        raise InvalidEvent(f"not a valid CloudEvent: {exc}") from exc
    if event.get_specversion() != "1.0":
        raise InvalidEvent(f"CloudEvents specversion {event.get_specversion()!r} is not 1.0")
    return _incoming(event, body)


def _structured(raw: Any, where: str = "") -> IncomingEvent:
    """One event in the JSON event format, checked member by member as ``/docs`` describes."""
    if not isinstance(raw, dict):
        raise InvalidEvent(f"{where}a structured CloudEvent must be a JSON object")
    # JSON format 1.0.2, section 2.2: an attribute that is null is unset (data_base64 too; a
    # null data is a null payload).
    raw = {name: value for name, value in raw.items() if value is not None or name == "data"}
    missing = [name for name in _REQUIRED if raw.get(name) in (None, "")]
    if missing:
        raise InvalidEvent(f"{where}CloudEvent lacks required attribute(s): {', '.join(missing)}")
    if "data" in raw and "data_base64" in raw:
        raise InvalidEvent(f"{where}data and data_base64 exclude each other")
    for name, value in raw.items():
        if name == "data":
            continue
        if name == "data_base64":
            if not isinstance(value, str) or not _BASE64.fullmatch(value):
                raise InvalidEvent(f"{where}data_base64 must be base64")
        elif name in _STRINGS:
            if not isinstance(value, str) or not value:
                raise InvalidEvent(f"{where}attribute {name} must be a non-empty string")
        elif name == "time":
            if not isinstance(value, str) or not _TIMESTAMP.fullmatch(value):
                raise InvalidEvent(f"{where}attribute time must be an RFC 3339 timestamp")
        elif not _EXTENSION_NAME.fullmatch(name):
            raise InvalidEvent(
                f"{where}{name!r} is not an attribute name: lower-case letters and digits only"
            )
        elif not _is_extension_value(value):
            raise InvalidEvent(
                f"{where}extension attribute {name} must be a string, a boolean or an integer "
                "of 32 bits"
            )
    if raw["specversion"] != "1.0":
        raise InvalidEvent(f"{where}CloudEvents specversion {raw['specversion']!r} is not 1.0")
    try:
        event = JSONFormat().read(None, json.dumps(raw))
    except Exception as exc:  # the SDK's validation errors (a time that is no date)
        raise InvalidEvent(f"{where}not a valid CloudEvent: {exc}") from exc
    return _incoming(event, raw.get("data"), where)


def _incoming(event: BaseCloudEvent, data: Any, where: str = "") -> IncomingEvent:
    """The event as this function acts on it, once its id and source are of a sane length."""
    for name, value in (("id", event.get_id()), ("source", event.get_source())):
        if len(value) > MAX_ID_SOURCE_CHARS:
            raise InvalidEvent(
                f"{where}attribute {name} is {len(value)} characters long; this function "
                f"accepts at most {MAX_ID_SOURCE_CHARS}"
            )
    return IncomingEvent(event.get_type(), event.get_source(), event.get_id(), data)


def _is_extension_value(value: Any) -> bool:
    """The JSON forms of the CloudEvents types: a string (String, URI, Timestamp, Binary...), a
    boolean, or an integer of 32 bits (``5.0`` too: JSON Schema's integer, which /docs says)."""
    if isinstance(value, bool | str):
        return True
    if isinstance(value, float) and not value.is_integer():
        return False
    return isinstance(value, int | float) and -_INT32 <= value < _INT32


def reply(
    data: dict[str, Any], request: IncomingEvent, source: str
) -> tuple[dict[str, str], bytes]:
    """The binary-mode HTTP reply to a query request: headers and body."""
    message = to_binary_event(_reply(data, request, source))
    return dict(message.headers), message.body


def reply_batch(answered: list[tuple[dict[str, Any], IncomingEvent]], source: str) -> bytes:
    """The replies to a batch's query requests, as one JSON batch body (``BATCH``)."""
    write = JSONFormat().write
    return (
        b"[" + b",".join(write(_reply(data, request, source)) for data, request in answered) + b"]"
    )


def _reply(data: dict[str, Any], request: IncomingEvent, source: str) -> CloudEvent:
    return CloudEvent(
        {
            "type": QUERY_RESPONSE,
            "source": source,
            "id": f"{request.id}-response",
            "datacontenttype": "application/json",
            "correlationid": request.id,
        },
        data,
    )


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
    """The last ``size`` (source, id) pairs handled: Knative may deliver an event twice.

    Each pair is kept as its 16-byte BLAKE2b digest, so the cache holds ``size`` times 16 bytes
    of keys (about 1.5 MB with the dict's own cost at the default size), however long the ids.
    """

    def __init__(self, size: int = 10_000) -> None:
        self._seen: OrderedDict[bytes, None] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._seen)

    @property
    def key_bytes(self) -> int:
        """The bytes of the keys held: 16 per event remembered."""
        with self._lock:
            return sum(len(key) for key in self._seen)

    def seen(self, event: IncomingEvent) -> bool:
        """Whether this event was handled already."""
        with self._lock:
            return _digest(event) in self._seen

    def remember(self, event: IncomingEvent) -> None:
        """Record a handled event, forgetting the oldest beyond the bound."""
        key = _digest(event)
        with self._lock:
            self._seen[key] = None
            self._seen.move_to_end(key)
            while len(self._seen) > self._size:
                self._seen.popitem(last=False)


def _digest(event: IncomingEvent) -> bytes:
    # The source's length first, so that no two (source, id) pairs share an encoding.
    source = event.source.encode("utf-8", "surrogatepass")
    encoded = b"%d:%s%s" % (len(source), source, event.id.encode("utf-8", "surrogatepass"))
    return hashlib.blake2b(encoded, digest_size=_DIGEST_BYTES).digest()
