"""Access and limits at the HTTP edge, as pure ASGI middleware (nothing reaches a route unchecked).

- ``ApiKeys``: with keys configured, every route but ``/healthz`` and ``/readyz`` needs
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time; else 401.
- ``Limits``: a request body larger than ``max_body_bytes`` is refused with 413 as soon as it is
  known (``Content-Length``, or while a chunked body streams in); beyond ``max_concurrency``
  requests in flight, new ones get 503 with ``Retry-After`` at once instead of queueing.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .problems import send_problem

__all__ = ["OPEN_PATHS", "ApiKeys", "Limits"]

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class ApiKeys:
    """Requires one of ``keys`` on every route but the health checks."""

    def __init__(self, app: ASGIApp, keys: Iterable[str]) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys if key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        offered = headers.get(b"x-api-key", b"")
        authorization = headers.get(b"authorization", b"")
        if authorization[:7].lower() == b"bearer ":
            offered = authorization[7:].strip()
        # compare_digest against every key, without stopping at the first match
        matches = [hmac.compare_digest(offered, key) for key in self.keys]
        if offered and any(matches):
            await self.app(scope, receive, send)
            return
        await send_problem(
            send,
            401,
            "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>",
            headers={"WWW-Authenticate": 'Bearer realm="knative-rag"'},
        )


class _BodyTooLarge(HTTPException):
    """Raised from ``receive``: an HTTPException, so the app's own handler renders the 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


class Limits:
    """Bounds the size of request bodies and the number of requests in flight."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_concurrency: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await send_problem(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        if self.in_flight >= self.max_concurrency:
            await send_problem(
                send,
                503,
                "too many requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
            return
        self.in_flight += 1
        received = 0
        started = False

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise _BodyTooLarge(self.max_body_bytes)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await send_problem(send, 413, f"request body over {self.max_body_bytes} bytes")
        finally:
            self.in_flight -= 1
