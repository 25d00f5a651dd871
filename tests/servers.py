"""Real servers on ephemeral loopback ports, for tests: uvicorn in a thread, moto's S3 server."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn on 127.0.0.1:<free port>; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def strict_container(name: str, env: dict[str, str]) -> list[str]:
    """``run`` flags for a container as Knative runs it at its strictest, on the host network.

    Read-only root, a tmpfs /tmp, an arbitrary non-root uid, no capabilities, no privilege
    escalation; ``env`` becomes ``-e`` flags.
    """
    flags = [
        "--name", name, "--network=host", "--read-only", "--tmpfs", "/tmp:rw,size=1g,mode=1777",
        "--user", "12345:12345", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    ]  # fmt: skip
    for key, value in env.items():
        flags += ["-e", f"{key}={value}"]
    return flags
