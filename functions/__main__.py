"""``python -m functions``: run the query function with uvicorn on ``$PORT``."""

from __future__ import annotations

import time

_STARTED = time.time()  # before the imports below, so cold-start figures include them

import sys  # noqa: E402
import threading  # noqa: E402

from .composition import compose  # noqa: E402
from .errors import ConfigurationError  # noqa: E402
from .logs import configure, redact  # noqa: E402
from .settings import Settings, api_keys  # noqa: E402


def main() -> None:
    """Read the settings once, start loading the index, then serve until SIGTERM.

    The index starts loading before the web framework is imported: reads from the store, the
    download and its hashing release the GIL, so the two overlap. The imports wait until the
    store's client exists and the channel is read, since making the client is CPU work under the
    GIL and the first step of every path to readiness.
    """
    settings = Settings()
    try:
        secrets = api_keys(settings)
    except ConfigurationError as exc:
        sys.exit(f"knative-rag: exiting: {exc.message}")
    # Our own loggers at RAG_LOG_LEVEL; libraries (botocore, httpx) only warn; all redacted.
    configure(settings.log_level, secrets=secrets, log_format=settings.log_format)
    try:
        loader = compose(settings, started_at=_STARTED)
    except ConfigurationError as exc:  # the Elasticsearch settings, say
        sys.exit(f"knative-rag: exiting: {exc.message}")
    loader.start()
    loader.downloading.wait(timeout=5)

    import uvicorn

    from .app import create_app
    from .connections import protocol

    loader.timings["imports"] = time.time() - _STARTED
    try:
        app = create_app(settings, loader=loader)
    except ConfigurationError as exc:  # the OIDC settings, say
        sys.exit(f"knative-rag: exiting: {exc.message}")
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host="0.0.0.0",
            port=settings.port,
            log_level=settings.log_level.lower(),
            log_config=None,  # uvicorn's records go through the root handler and its Redactor
            access_log=False,  # functions.edge writes one line per request, with its request id
            # h11 (the only HTTP/1.1 parser installed) with a deadline for request heads and a
            # bound on open connections; bodies have theirs in functions.guards.Limits.
            http=protocol(
                header_timeout_s=settings.header_timeout_s,
                max_connections=settings.max_connections,
            ),
        )
    )
    failure: list[str] = []

    def watchdog() -> None:
        # A function that cannot load must not sit unready forever: Knative would keep the
        # revision pending until its progress deadline. Exit non-zero with the reason instead.
        if not loader.done.wait(settings.startup_timeout_s):
            failure.append(
                f"index not ready after {settings.startup_timeout_s:g} s ({loader.reason})"
            )
        elif loader.service is None:
            failure.append(loader.reason or "index load failed")
        if failure:
            server.should_exit = True

    threading.Thread(target=watchdog, name="startup-watchdog", daemon=True).start()
    server.run()
    if failure:
        print(f"knative-rag: exiting: {redact(failure[0], secrets)}", file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
