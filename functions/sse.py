"""Server-Sent Events for streamed answers (``Accept: text/event-stream``).

    event: token     data: {"text": "..."}                       one per piece of the answer
    event: end       data: the whole answer, as POST /query answers it (sources, cited, index_id)
    event: error     data: a problem+json object, when the answer fails after the stream began

The answer's tokens come from a blocking iterator (the model server's HTTP stream). A pump
thread drives it and hands tokens to the event loop; when the client goes away the response is
cancelled, the pump stops at the next token and closes the iterator, which closes the stream to
Ollama, and Ollama stops generating.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from .errors import RagError
from .service import AnswerStream, QueryResult

__all__ = ["MEDIA_TYPE", "event", "stream_events", "wants_events"]

logger = logging.getLogger(__name__)

MEDIA_TYPE = "text/event-stream"
_DONE = object()


def wants_events(accept: str) -> bool:
    """Whether an ``Accept`` header asks for an event stream."""
    return any(part.split(";")[0].strip() == MEDIA_TYPE for part in accept.split(","))


def event(name: str, data: Any) -> bytes:
    """One SSE event; ``data`` as compact JSON on one line."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {name}\ndata: {payload}\n\n".encode()


class _Pump:
    """Drives a blocking iterator in a thread of its own, handing items to the event loop."""

    def __init__(self, tokens: Iterator[str], loop: asyncio.AbstractEventLoop) -> None:
        self.tokens = tokens
        self.loop = loop
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.stop = threading.Event()
        context = contextvars.copy_context()  # the request id, for whatever the LLM logs
        self.thread = threading.Thread(
            target=context.run, args=(self._run,), name="sse-pump", daemon=True
        )
        self.thread.start()

    def _run(self) -> None:
        try:
            for token in self.tokens:
                if self.stop.is_set() or not self._put(token):
                    break
            else:
                self._put(_DONE)
        except BaseException as exc:
            if not self.stop.is_set():
                self._put(exc)
        finally:
            close = getattr(self.tokens, "close", None)
            if close is not None:
                close()  # here, in the thread that iterated it: stops the LLM's HTTP stream

    def _put(self, item: Any) -> bool:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is gone (the server stopped): stop reading
            self.stop.set()
            return False
        return True

    async def get(self) -> Any:
        return await self.queue.get()


async def stream_events(
    stream: AnswerStream,
    first: str | None,
    render: Callable[[QueryResult], dict[str, Any]],
    problem: Callable[[RagError], dict[str, Any]],
) -> AsyncIterator[bytes]:
    """The events of one answer; ``first`` is the token already read (to fail before headers)."""
    pieces: list[str] = []
    pump = _Pump(stream.tokens, asyncio.get_running_loop()) if first is not None else None
    try:
        if first is not None:
            pieces.append(first)
            yield event("token", {"text": first})
        while pump is not None:
            item = await pump.get()
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                if isinstance(item, RagError):
                    logger.warning("stream failed: %s: %s", item.title, item.message)
                    yield event("error", problem(item))
                    return
                raise item
            pieces.append(item)
            yield event("token", {"text": item})
        text = "".join(pieces) if stream.answer_type is not None else None
        yield event("end", render(stream.result(text)))
    finally:
        if pump is not None:
            pump.stop.set()
