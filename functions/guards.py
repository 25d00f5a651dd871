"""Access and limits at the HTTP edge, as pure ASGI middleware (nothing reaches a route unchecked).

- ``ApiKeys``: with keys configured, every route but ``/healthz`` and ``/readyz`` needs
  ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``, compared in constant time; else 401.
  On those two it notes in the request state (``AUTHORIZED``) whether a valid key came along.
  With a ``TokenVerifier``, the ``token_paths`` (``/events``) take a valid Knative Eventing OIDC
  token instead of a key: 401 for an invalid one (the log says which check failed), 403 for a
  subject not allowed, 503 + ``Retry-After`` when the issuer's keys cannot be fetched. Those
  paths need a key or a token even when no keys are configured.
- ``JsonBodies``: a request body to the JSON routes that is not declared ``application/json``
  (or ``application/*+json``) is refused with 415 before it is read.
- ``Limits``: a request's body is read whole before the request counts as in flight, so a
  client that sends its body slowly holds a connection, not one of the ``max_concurrency``
  slots; the body must arrive within ``body_timeout_s`` in all and with no pause longer than
  ``body_idle_timeout_s`` (else 408 and the connection is closed), and a body larger than
  ``max_body_bytes`` is refused with 413 as soon as it is known (``Content-Length``, or while a
  chunked body streams in). Then, beyond ``max_concurrency`` requests in flight, new ones get
  503 with ``Retry-After`` at once instead of queueing; the others get their body replayed.
  The health checks pass by unread and uncounted.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Iterable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .oidc import TokenVerifier
from .problems import send_problem

__all__ = [
    "AUTHORIZED",
    "OPEN_PATHS",
    "ApiKeys",
    "JsonBodies",
    "Limits",
    "describe_security",
    "is_json",
]

# /health/liveness and /health/readiness: the same probes at the paths Knative Functions uses.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/health/liveness", "/health/readiness"})
# Set by ``ApiKeys`` in the request state of the open paths: whether a valid key came with it.
AUTHORIZED = "api_key_valid"

logger = logging.getLogger(__name__)

_CHALLENGE = 'Bearer realm="knative-rag"'
_KEY_REQUIRED = "an API key is required: Authorization: Bearer <key> or X-API-Key: <key>"
_SENDER_REQUIRED = (
    "an API key or a Knative Eventing OIDC token for this service is required: "
    "Authorization: Bearer <token>"
)


class ApiKeys:
    """Requires one of ``keys`` on every route but the health checks, or a token on
    ``token_paths`` when ``tokens`` verifies them."""

    def __init__(
        self,
        app: ASGIApp,
        keys: Iterable[str],
        *,
        tokens: TokenVerifier | None = None,
        token_paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.keys = [key.encode() for key in keys if key]
        self.tokens = tokens
        self.token_paths = frozenset(token_paths) if tokens is not None else frozenset()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] in OPEN_PATHS:
            # Open, but what they show may depend on it (``/readyz``'s figures).
            _, offered = _offered(scope)
            authorized = any(self._is_key(value) for value in offered)
            scope.setdefault("state", {})[AUTHORIZED] = authorized
            await self.app(scope, receive, send)
            return
        tokens = self.tokens if scope["path"] in self.token_paths else None
        if not self.keys and tokens is None:
            await self.app(scope, receive, send)
            return
        bearer, offered = _offered(scope)
        if any(self._is_key(value) for value in offered):
            await self.app(scope, receive, send)
            return
        if tokens is None:
            await _refuse(send, 401, _KEY_REQUIRED, invalid=bool(offered))
            return
        if bearer.count(b".") != 2:  # no JWT: a wrong key, or nothing
            if offered:
                logger.warning(
                    "%s %s: neither an API key nor a JWT", scope["method"], scope["path"]
                )
            await _refuse(send, 401, _SENDER_REQUIRED, invalid=bool(offered))
            return
        verdict = await run_in_threadpool(tokens.verify, bearer.decode("latin-1"))
        if verdict.status == 200:
            await self.app(scope, receive, send)
            return
        # The client is told only the outcome; the operator, which check failed.
        logger.warning(
            "%s %s: token refused (%d): %s", scope["method"], scope["path"], verdict.status,
            verdict.reason,
        )  # fmt: skip
        if verdict.status == 403:
            await _refuse(
                send, 403, "this token's subject may not deliver events here", insufficient=True
            )
        elif verdict.status == 503:
            await send_problem(
                send, 503, "the token cannot be checked now; retry shortly",
                headers={"Retry-After": "1"},
            )  # fmt: skip
        else:
            await _refuse(send, 401, _SENDER_REQUIRED, invalid=True)

    def _is_key(self, offered: bytes) -> bool:
        # compare_digest against every key, without stopping at the first match
        matches = [hmac.compare_digest(offered, key) for key in self.keys]
        return any(matches)


def _offered(scope: Scope) -> tuple[bytes, list[bytes]]:
    """The bearer token, and every credential offered (X-API-Key, bearer)."""
    headers = dict(scope["headers"])
    authorization = headers.get(b"authorization", b"")
    bearer = authorization[7:].strip() if authorization[:7].lower() == b"bearer " else b""
    return bearer, [value for value in (headers.get(b"x-api-key", b""), bearer) if value]


async def _refuse(
    send: Send, status: int, detail: str, *, invalid: bool = False, insufficient: bool = False
) -> None:
    """401 or 403 with an RFC 6750 challenge: an error code only when credentials were sent."""
    error = ', error="invalid_token"' if invalid else ""
    if insufficient:
        error = ', error="insufficient_scope"'
    await send_problem(send, status, detail, headers={"WWW-Authenticate": _CHALLENGE + error})


def describe_security(
    document: dict[str, Any], *, keys: bool, token_paths: Iterable[str] = ()
) -> None:
    """Declare in an OpenAPI document what ``ApiKeys`` requires: with ``keys``, a key on every
    operation but the health checks; on ``token_paths``, a key or a bearer token."""
    token_paths = frozenset(token_paths)
    if not keys and not token_paths:
        return
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    accepted = ["an API key"] * keys + ["a Knative Eventing OIDC token on /events"] * bool(
        token_paths
    )
    schemes["bearer"] = {"type": "http", "scheme": "bearer", "description": " or ".join(accepted)}
    if keys:
        schemes["apiKey"] = {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    for path, operations in document.get("paths", {}).items():
        if path in OPEN_PATHS or not (keys or path in token_paths):
            continue
        for operation in operations.values():
            operation["security"] = [{"apiKey": []}, {"bearer": []}] if keys else [{"bearer": []}]


def is_json(content_type: str) -> bool:
    """Whether a Content-Type value is JSON: ``application/json`` or ``application/*+json``,
    with any parameters (``; charset=utf-8``)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    )


class JsonBodies:
    """Answers 415 to a POST to ``paths`` whose body is not declared JSON, before reading it.

    A missing Content-Type is refused too: FastAPI 0.132 and later no longer read such a body as
    JSON either (``strict_content_type``), and a browser may send a body without one cross-site
    with no CORS preflight (``fetch`` with a ``Blob``), so reading it would let any web page post
    to a service run without API keys. Every client we document sends the header.
    """

    def __init__(self, app: ASGIApp, *, paths: Iterable[str]) -> None:
        self.app = app
        self.paths = frozenset(paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in self.paths:
            content_type = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1")
            if not is_json(content_type):
                await send_problem(
                    send,
                    415,
                    "the request body must be JSON: Content-Type: application/json",
                    # Accept-Post (W3C LDP, IANA-registered): what a POST here may carry.
                    headers={"Accept-Post": "application/json"},
                )
                return
        await self.app(scope, receive, send)


class Limits:
    """Reads request bodies within deadlines and bounds, then bounds the requests in flight."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_concurrency: int,
        body_timeout_s: float = 10.0,
        body_idle_timeout_s: float = 5.0,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_concurrency = max_concurrency
        self.body_timeout_s = body_timeout_s
        self.body_idle_timeout_s = body_idle_timeout_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        too_large = f"request body over {self.max_body_bytes} bytes"
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await send_problem(send, 413, too_large)
            return
        try:
            body = await self._read_body(receive)
        except _BodyTooLarge:
            await send_problem(send, 413, too_large)
            return
        except _BodyTooSlow as exc:
            # RFC 9110, section 15.5.9: a 408 closes the connection.
            await send_problem(send, 408, str(exc), headers={"Connection": "close"})
            return
        if body is None:  # the client left before its body arrived: nobody to answer
            return
        if self.in_flight >= self.max_concurrency:
            await send_problem(
                send,
                503,
                "too many requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:  # after the body: wait for the client to leave, as uvicorn does
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        self.in_flight += 1
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= 1

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or None if the client disconnected; raises past a bound."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.body_timeout_s
        chunks: list[bytes] = []
        size = 0
        while True:
            left = deadline - loop.time()
            wait = min(self.body_idle_timeout_s, left)
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0))
            except TimeoutError:
                if wait >= left:
                    raise _BodyTooSlow(
                        f"the request body did not arrive within {self.body_timeout_s:g} s"
                    ) from None
                raise _BodyTooSlow(
                    f"the request body paused for more than {self.body_idle_timeout_s:g} s"
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _BodyTooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _BodyTooLarge(Exception):
    """The body grew past ``max_body_bytes`` while it was read."""


class _BodyTooSlow(Exception):
    """The body did not arrive within its deadlines."""
