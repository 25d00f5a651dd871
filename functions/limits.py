"""What LLM answers may take in one process: a deadline each, and a bound on how many at once.

An answer takes a slot before its first model call and gives it back after its last token, so
that at most ``concurrency`` answers (hence LLM calls: an answer makes them one after another)
are at the model server at once; one more is refused at once with ``ModelBusy`` (503 and
``Retry-After``) rather than queued behind the others. The slot is held until the work ends, not
the request: an answer whose client got its 504 keeps its slot until its model calls end, which
its deadline bounds (``engine.ollama_llm``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterator

from .errors import ModelBusy

__all__ = ["AnswerLimits", "releasing"]


class AnswerLimits:
    """What LLM answers may take in one process: each ends by ``deadline_s`` after it starts,
    and at most ``concurrency`` run at once (the next one is refused at once, not queued).

    One object serves the process's successive services (hot reloads), so the bound holds
    across them. An answer makes its LLM calls one after another, so it also bounds the calls
    in flight to the model server.
    """

    def __init__(self, *, deadline_s: float | None = None, concurrency: int | None = None) -> None:
        self.deadline_s = deadline_s
        self.concurrency = concurrency
        self._slots = threading.BoundedSemaphore(concurrency) if concurrency else None

    def take(self) -> tuple[float | None, Callable[[], None]]:
        """A slot for one answer: its deadline and the slot's release (idempotent);
        ``ModelBusy`` when every slot is taken."""
        slots = self._slots
        if slots is not None and not slots.acquire(blocking=False):
            raise ModelBusy(
                f"{self.concurrency} answers are being written already, the most this "
                "instance takes at once; retry shortly"
            )
        deadline = None if self.deadline_s is None else time.monotonic() + self.deadline_s
        once = threading.Lock()

        def release() -> None:
            if slots is not None and once.acquire(blocking=False):
                slots.release()

        return deadline, release


def releasing(tokens: Iterator[str], release: Callable[[], None]) -> Iterator[str]:
    """``tokens``, releasing the answer's slot once they end or are closed (or dropped)."""

    def relay() -> Iterator[str]:
        try:
            yield from tokens  # closing this closes ``tokens``: the LLM's stream
        finally:
            release()

    relayed = relay()
    weakref.finalize(relayed, release)  # dropped before it ever started
    return relayed
