"""Connections below the app: a deadline for every request head, and a bound on open ones.

uvicorn's h11 protocol keeps a connection open as long as its client likes until the first
request head is complete: its keep-alive timer runs only between a response and the next byte,
and a connection that sends nothing, or half a head, has no timer at all. ``protocol`` makes
uvicorn's ``H11Protocol`` with two additions, given to ``uvicorn.Config(http=...)`` by
``python -m functions``:

- a head deadline: a connection that has not completed a request head ``header_timeout_s``
  after it opened, or after its last response, is closed (uvicorn's shorter keep-alive timer
  still closes idle keep-alive connections first);
- a bound on open connections: when a new one would make more than ``max_connections``, the
  connection that has waited longest without a request in the app (no head yet, between
  requests, or still sending a body, which ``guards.Limits`` reads before the request counts)
  is closed to make room; if every connection has a request in the app, the new one is closed.

So a client that opens connections and sends nothing, half a head or a body that never ends
can take no more than what the deadlines allow, and new connections (Knative's probes and
queue-proxy among them) always get in. uvicorn's own ``limit_concurrency`` is not that bound: it
counts connections and tasks together and answers 503 to every request beyond it, health checks
included, while idle connections stay open.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["protocol"]

logger = logging.getLogger(__name__)


def protocol(*, header_timeout_s: float, max_connections: int) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with a deadline for request heads and a bound on connections."""
    if header_timeout_s <= 0 or max_connections < 1:
        raise ValueError("header_timeout_s must be positive and max_connections at least 1")
    attributes = {"header_timeout_s": header_timeout_s, "max_connections": max_connections}
    return type("BoundedH11Protocol", (_BoundedH11Protocol,), attributes)


class _BoundedH11Protocol(H11Protocol):
    """One connection; its class attributes are the limits."""

    header_timeout_s: ClassVar[float] = 10.0
    max_connections: ClassVar[int] = 256

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._waiting_since = 0.0  # when it last began to wait for a head, or for a body

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._head_timer is not None and not self._idle():
            self._cancel_head_timer()  # a head arrived: the request is the app's now
            self._waiting_since = self.loop.time()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request
        if self._idle() and not self.transport.is_closing():
            self._wait_for_head()

    def _idle(self) -> bool:
        """No request of this connection is in the app: no head yet, or its response is sent."""
        return self.cycle is None or self.cycle.response_complete

    def _sending_body(self) -> bool:
        """A request whose body is still arriving and that has no response yet."""
        cycle = self.cycle
        return cycle is not None and cycle.more_body and not cycle.response_started

    def _wait_for_head(self) -> None:
        self._cancel_head_timer()
        self._waiting_since = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_overdue)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_overdue(self) -> None:
        self._head_timer = None
        if self._idle() and not self.transport.is_closing():
            logger.debug("closing a connection: no request head within %g s", self.header_timeout_s)
            self.transport.close()

    def _make_room(self) -> None:
        """Close one connection if this one makes too many: the longest waiting without a
        request in the app, else (every other one busy) this one."""
        open_ = [c for c in self.connections if not c.transport.is_closing()]
        if len(open_) <= self.max_connections:
            return
        others = [c for c in open_ if c is not self and isinstance(c, _BoundedH11Protocol)]
        for evictable in (
            [c for c in others if c._idle()],
            [c for c in others if c._sending_body()],
        ):
            if evictable:
                victim = min(evictable, key=lambda c: c._waiting_since)
                logger.debug("closing a waiting connection: over %d open", self.max_connections)
                victim.transport.close()
                return
        logger.warning("refusing a connection: %d open, all answering", len(open_) - 1)
        self.transport.close()
