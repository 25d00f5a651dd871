"""What happens at the HTTP edge for every request: a request id, metrics, one access log line.

The request id is the caller's ``X-Request-Id`` when it is a sane token, else the trace id of a
W3C ``traceparent``, else (on AWS Lambda) the front door's own request id, else a new one. It is
returned in ``X-Request-Id`` and set in a context variable, so every log line written while the
request runs carries it (threads the request starts included).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .logs import request_id
from .metrics import Metrics
from .problems import send_problem

__all__ = ["Edge", "pick_request_id"]

access = logging.getLogger("functions.access")
errors = logging.getLogger("functions.errors")

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Probes and scrapes that succeed are not logged.
_QUIET = frozenset({"/healthz", "/readyz", "/metrics", "/health/liveness", "/health/readiness"})

_TOKEN = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def pick_request_id(headers: dict[bytes, bytes], aws_event: Any = None) -> str:
    """The caller's request id, the traceparent's trace id, Lambda's, or a new one."""
    given = headers.get(b"x-request-id", b"").decode("latin-1").strip()
    if _TOKEN.match(given):
        return given
    trace = _TRACEPARENT.match(headers.get(b"traceparent", b"").decode("latin-1").strip())
    if trace and trace.group(1) != "0" * 32:
        return trace.group(1)
    if isinstance(aws_event, dict):  # Mangum: API Gateway and function URLs say which request
        context = aws_event.get("requestContext") or {}
        lambda_id = str(context.get("requestId", "")) if isinstance(context, dict) else ""
        if _TOKEN.match(lambda_id):
            return lambda_id
    return uuid.uuid4().hex


class Edge:
    """Outermost middleware: sees every answer, the guards' 401/413/503 included."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = pick_request_id(dict(scope["headers"]), scope.get("aws.event"))
        token = request_id.set(rid)
        status = 500  # what the client gets if the app fails before answering
        index_id = ""
        sent = 0
        responded = False

        async def tracked(message: Message) -> None:
            nonlocal status, index_id, sent, responded
            if message["type"] == "http.response.start":
                responded = True
                status = message["status"]
                headers = list(message.get("headers", []))
                for name, value in headers:
                    if name == b"x-index-id":
                        index_id = value.decode("latin-1")
                message["headers"] = [*headers, (b"x-request-id", rid.encode("latin-1"))]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, tracked)
            if not responded:  # the client left first (mid-body, say): nginx's 499, no answer
                status = 499
        except Exception:
            # Logged here, with the request id, as one redacted line; the client gets a bare
            # problem (if nothing was sent yet) that still says which request it was.
            errors.exception("%s %s failed", scope["method"], scope["path"])
            if not responded:
                await send_problem(tracked, 500, "an unexpected error occurred", "Internal error")
        finally:
            self.metrics.in_flight.dec()
            seconds = time.perf_counter() - started
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            # Methods come from the client: a fixed set of label values, whatever it sends.
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.duration.labels(template, method).observe(seconds)
            if template not in _QUIET or status >= 400:
                access.info(
                    "%s %s %d %.1f ms",
                    method,
                    scope["path"],
                    status,
                    seconds * 1000,
                    extra={
                        "http": {
                            "method": method,
                            "path": scope["path"],
                            "route": template,
                            "status": status,
                            "duration_ms": round(seconds * 1000, 2),
                            "response_bytes": sent,
                            "index_id": index_id or None,
                        }
                    },
                )
            request_id.reset(token)
