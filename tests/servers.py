"""Real servers on ephemeral loopback ports, for tests: uvicorn in a thread, a holding proxy."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import Response


@contextmanager
def serve(app: Any, *, tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Run an ASGI app under a real uvicorn on 127.0.0.1:<free port>; yields its base URL.

    With ``tls`` (a certificate and its key) it serves HTTPS.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        app,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=5,
        ssl_certfile=str(tls[0]) if tls else None,
        ssl_keyfile=str(tls[1]) if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@dataclass
class Running:
    """A ``python -m functions`` process, a client for it, and (once it stopped) its output."""

    proc: subprocess.Popen[str]
    client: httpx.Client
    output: str = ""


@contextmanager
def function_process(env: dict[str, str]) -> Iterator[Running]:
    """``python -m functions`` (the container's command) on a free port, once ready; on exit it
    gets SIGTERM and its output is collected. The output is read as it comes, so a long run's
    log lines never fill the pipe and stall the process."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "functions"],
        env={**env, "PORT": str(port)},
        cwd=Path(__file__).resolve().parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Running(proc, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10))
    lines: list[str] = []
    assert proc.stdout is not None
    reader = threading.Thread(target=lines.extend, args=(proc.stdout,), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if running.client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"python -m functions did not become ready: {proc.poll()}")
            time.sleep(0.05)
        yield running
    finally:
        running.client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        running.output = "".join(lines)


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


class Gate:
    """A forwarding HTTP proxy that fails or holds requests, to put faults at exact points.

    The first ``refuse`` requests get ``refusal`` (by default 503 SlowDown, S3's throttling) as
    an S3 error document, without being forwarded. Request headers named in ``strip`` are not
    forwarded (``If-Match``: a server that ignores conditional writes). The first
    request whose "METHOD /path" matches ``hold`` is held: ``held`` is set once it has arrived,
    and it stays unanswered until ``release`` is set, then gets 503.
    """

    def __init__(
        self,
        target: str,
        hold: str | None = None,
        *,
        refuse: int = 0,
        refusal: tuple[int, str] = (503, "SlowDown"),
        strip: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        self.target = target
        self.strip = {name.lower() for name in strip}
        self.hold = re.compile(hold) if hold else None
        self.refuse = refuse
        self.refusal = refusal
        self.refused = 0
        self.held = threading.Event()
        self.release = threading.Event()
        self.forwarded: list[tuple[str, str]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        request = Request(scope, receive)
        method, path = request.method, request.url.path
        body = await request.body()
        if self.refused < self.refuse:
            self.refused += 1
            status, code = self.refusal
            body = _S3_ERROR.format(code=code)
            await Response(body, status, media_type="application/xml")(scope, receive, send)
            return
        if self.hold and not self.held.is_set() and self.hold.search(f"{method} {path}"):
            self.held.set()
            while not self.release.is_set():
                await asyncio.sleep(0.05)
            await Response(status_code=503)(scope, receive, send)
            return
        headers = [(k, v) for k, v in request.headers.items() if k not in _HOP_HEADERS | self.strip]
        url = self.target + scope["raw_path"].decode()
        if scope["query_string"]:
            url += "?" + scope["query_string"].decode()
        async with httpx.AsyncClient(timeout=60) as client:
            upstream = await client.request(method, url, headers=headers, content=body)
        self.forwarded.append((method, path))
        response_headers = {
            k: v for k, v in upstream.headers.items() if k not in _HOP_HEADERS | {"content-length"}
        }
        await Response(upstream.content, upstream.status_code, response_headers)(
            scope, receive, send
        )


_S3_ERROR = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
    "<Message>The gate said {code}.</Message></Error>"
)
_HOP_HEADERS = {"host", "connection", "transfer-encoding", "content-encoding", "expect"}


def kill_when_held(gate: Gate, proc: subprocess.Popen[str]) -> None:
    """SIGKILL ``proc`` once ``gate`` holds its request: the process dies at exactly that point.
    The held request is then released and the process's pipes drained."""
    try:
        died = proc.poll() is not None and proc.stderr is not None
        assert gate.held.wait(120), proc.stderr.read() if died and proc.stderr else ""
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        gate.release.set()
        proc.kill()
        proc.communicate()


class Proxy:
    """A TCP proxy on an ephemeral loopback port in front of ``target`` (host:port) that a test
    can break: ``open`` forwards, ``refuse`` closes each connection at once (a server that is
    down), ``hang`` accepts and never answers (a server that is stuck). Changing the mode drops
    every connection already open, as a restarting server would."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.mode = "open"
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, name="proxy", daemon=True).start()

    def set(self, mode: str) -> None:
        with self._lock:
            self.mode = mode
            dropped, self._open = self._open, set()
        for sock in dropped:
            _close(sock)

    def close(self) -> None:
        self.set("refuse")
        _close(self._listener)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                mode = self.mode
                if mode != "refuse":
                    self._open.add(client)
            if mode == "refuse":
                _close(client)
            elif mode == "open":
                try:
                    upstream = socket.create_connection(self._target, timeout=5)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._open.add(upstream)
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=_pump, args=(source, sink), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(sock: socket.socket) -> None:
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
