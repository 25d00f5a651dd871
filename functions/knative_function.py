"""The query function as a Knative Function: a function instance for the ``func-python``
middleware, around the same FastAPI app ``python -m functions`` serves.

``func`` (``func run``, ``func build``, ``func deploy``) finds ``new`` in the ``function``
package at the repository's root, and its scaffolding serves it with ``func_python.http.serve``:
an ASGI application on hypercorn that calls the instance's lifecycle hooks and routes every other
request to ``handle``. So, with what ``python -m functions`` does on each:

- ``start(cfg)``, at the server's lifespan start, with a copy of the environment: the settings
  are read from ``cfg`` (``Settings.from_environ``, the same fields and validation), logging is
  configured, and the index starts loading in its thread, as ``python -m functions`` starts it
  before serving. A start that cannot load within ``RAG_STARTUP_TIMEOUT_S``, or a configuration
  that is wrong, ends the process with status 1 and a one-line reason, as there.
- ``ready()`` at ``/health/readiness``: the index is loaded and verified (the truth ``/readyz``
  tells, and its reason while it is not); ``alive()`` at ``/health/liveness``: as ``/healthz``.
- ``handle``: the app of ``functions.app``, unchanged: ``/query``, ``/chat``, ``/events``,
  ``/metrics``, ``/readyz`` and the rest, with their guards, problems and access log.
- ``stop()``, at lifespan shutdown: after the server has stopped taking connections and its
  requests in flight have finished, as after SIGTERM under uvicorn; then the loader closes.

hypercorn waits for requests in flight up to its ``graceful_timeout`` (3 s by default), which
``start`` raises to ``RAG_REQUEST_TIMEOUT_S`` plus a margin, the longest a query may take; its
error log goes through our redacting handler instead of one of its own. ``RAG_HEADER_TIMEOUT_S``
and ``RAG_MAX_CONNECTIONS`` are uvicorn's (``functions.connections``): under func-python,
hypercorn's own keep-alive timeout (5 s) and request-head size bound (16 KiB) apply.
"""

from __future__ import annotations

import time

_STARTED = time.time()  # for the cold-start figures, as in functions.__main__

import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import TYPE_CHECKING, Any, NoReturn  # noqa: E402

if TYPE_CHECKING:
    from starlette.types import Message, Receive, Scope, Send

    from .loader import IndexLoader

__all__ = ["Function", "new"]

logger = logging.getLogger("functions.knative_function")  # also when run as __main__
_DRAIN_MARGIN_S = 10.0  # beyond the longest query, for its response to be written


class Function:
    """One function instance: the app, its index loader, and the hooks func-python calls."""

    def __init__(self) -> None:
        self.app: Any = None
        self.loader: IndexLoader | None = None

    def start(self, cfg: Mapping[str, str]) -> None:
        """Read the settings from ``cfg``, start loading the index, build the app. Returns at
        once: the server answers the health probes while the index loads. Whatever fails here
        ends the process with its reason: hypercorn would otherwise log one line and serve on
        without the app, unready until Knative's progress deadline."""
        try:
            self._start(cfg)
        except Exception as exc:
            from .errors import RagError

            if isinstance(exc, RagError):
                _exit(exc.message)
            if isinstance(exc, ValueError):  # pydantic's ValidationError: a wrong setting
                _exit(" ".join(str(exc).split()))
            logger.exception("the function could not start")
            _exit(f"could not start: {type(exc).__name__}: {exc}")

    def _start(self, cfg: Mapping[str, str]) -> None:
        from .composition import compose
        from .logs import configure
        from .settings import Settings, api_keys

        settings = Settings.from_environ(cfg)
        secrets = api_keys(settings)
        # func-python's basicConfig and hypercorn's handler are replaced: one redacted line each.
        configure(settings.log_level, secrets=secrets, log_format=settings.log_format, replace=True)
        _tune_server(settings.request_timeout_s)
        loader = compose(settings, started_at=_STARTED)
        loader.start()
        from .app import create_app

        loader.timings["imports"] = time.time() - _STARTED
        self.app = create_app(settings, loader=loader)
        self.loader = loader
        threading.Thread(
            target=self._watchdog,
            args=(loader, settings.startup_timeout_s),
            name="startup-watchdog",
            daemon=True,
        ).start()

    @staticmethod
    def _watchdog(loader: IndexLoader, timeout_s: float) -> None:
        # As under python -m functions: a function that cannot load must not sit unready until
        # Knative's progress deadline. The process ends with the reason instead.
        if not loader.done.wait(timeout_s):
            _exit(f"index not ready after {timeout_s:g} s ({loader.reason})")
        elif loader.service is None:
            _exit(loader.reason or "index load failed")

    def stop(self) -> None:
        """The server stopped taking requests and finished those in flight: close the loader."""
        if self.loader is not None:
            self.loader.close()

    def alive(self) -> tuple[bool, str]:
        """Liveness, as ``/healthz``: the process is up and serving."""
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        """Readiness, as ``/readyz``: the index is loaded and verified."""
        loader = self.loader
        service = loader.service if loader is not None else None
        if service is None:
            reason = loader.public_reason if loader is not None else None
            return False, reason or "not ready"
        return True, f"ready: {service.index_id}"

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Every request but the health probes: the app. Its errors are answered and logged by
        the app itself; none reaches func-python, which would answer a second time."""
        if self.app is None:
            await _not_started(send)
            return
        try:
            await self.app(scope, receive, send)
        except Exception:  # answered (500) and logged by functions.edge already
            logger.debug("request ended with an error the app has answered", exc_info=True)


def new() -> Function:
    """The function instance ``func``'s scaffolding serves (``func_python.http.serve(new)``)."""
    try:
        import hypercorn.config
    except ImportError:  # served some other way
        return Function()
    # func-python builds hypercorn's Config itself, before start(): its class defaults are the
    # only knobs. Its error log goes through our handler instead of a second one of its own.
    hypercorn.config.Config.errorlog = logging.getLogger("hypercorn.error")
    return Function()


def _tune_server(request_timeout_s: float) -> None:
    """hypercorn's drain from the settings (read at shutdown, so set before it): requests in
    flight at SIGTERM may take a query's deadline to finish. Not its ``read_timeout``: that
    bounds every read of a connection, so it would cut a client waiting for a long answer; the
    head deadline and connection bound of ``functions.connections`` are uvicorn's only."""
    try:
        import hypercorn.config
    except ImportError:
        return
    hypercorn.config.Config.graceful_timeout = request_timeout_s + _DRAIN_MARGIN_S


def _exit(reason: str) -> NoReturn:
    """End the process with status 1 and one line saying why, as ``python -m functions``."""
    from .logs import redact

    print(f"knative-rag: exiting: {redact(reason)}", file=sys.stderr, flush=True)
    os._exit(1)


async def _not_started(send: Send) -> None:
    body = (
        b'{"type":"about:blank","title":"Not ready","status":503,'
        b'"detail":"the function has not started"}'
    )
    start: Message = {
        "type": "http.response.start",
        "status": 503,
        "headers": [
            (b"content-type", b"application/problem+json"),
            (b"retry-after", b"1"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    """``python -m functions.knative_function``: serve the function with func-python, as
    ``func``'s scaffolding does, on ``$PORT`` (``LISTEN_ADDRESS``, func-python's own, wins)."""
    os.environ.setdefault("LISTEN_ADDRESS", f"0.0.0.0:{os.environ.get('PORT', '8080')}")
    from func_python.http import serve

    serve(new)


if __name__ == "__main__":
    main()
