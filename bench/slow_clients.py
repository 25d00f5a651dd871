"""Slow and silent clients against a real function: what they hold, when they are let go, and
what normal clients get meanwhile.

    python bench/slow_clients.py [--dripping 64] [--stalled 16] [--partial 16] [--silent 16]
                                 [--rounds 10]

Starts moto's S3 server, the Ollama double and ``python -m functions`` (the container's command,
default settings) with a small synthetic index, then opens at once:

- ``dripping``: ``POST /query`` with ``Content-Length: 1000``, then one byte every 0.5 s;
- ``stalled``: the same head and a few bytes of body, then nothing;
- ``partial``: half a request head, then nothing;
- ``silent``: a connection that sends nothing;

and, while they are open, sends ``rounds`` rounds of normal requests (``POST /query``, a query
CloudEvent to ``/events``, ``GET /metrics``, ``GET /readyz``). Prints and writes
bench/slow_clients.json: the statuses the normal requests got and when, and for each kind of
attacker how long until the function closed it and what it was told.

``attack`` is also what ``tests/test_connections.py`` runs, with short deadlines.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import selectors
import shutil
import socket
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_HEAD = (
    b"POST /query HTTP/1.1\r\nHost: function\r\nContent-Type: application/json\r\n"
    b"Content-Length: 1000\r\n\r\n"
)
_QUERY = json.dumps({"query": "facts about rivers", "mode": "retrieve", "top_k": 2}).encode()
_DRIP_S = 0.5


def attack(
    port: int,
    *,
    dripping: int = 64,
    stalled: int = 16,
    partial: int = 16,
    silent: int = 16,
    rounds: int = 10,
    wait_s: float = 60.0,
) -> dict[str, Any]:
    """Open the attackers, send normal requests while they are open, wait until the function
    closes every attacker (or ``wait_s`` passes); returns the figures."""
    openers = {
        "dripping": _HEAD + b'{"query": "',
        "stalled": _HEAD + b'{"query": "',
        "partial": b"POST /query HTTP/1.1\r\nHost: function\r\nContent-Ty",
        "silent": b"",
    }
    counts = {"dripping": dripping, "stalled": stalled, "partial": partial, "silent": silent}
    attackers: list[_Attacker] = []
    for kind, count in counts.items():
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            if openers[kind]:
                sock.sendall(openers[kind])
            attackers.append(_Attacker(kind, sock, time.monotonic()))
    started = min((a.opened for a in attackers), default=time.monotonic())
    watcher = threading.Thread(target=_watch, args=(attackers, wait_s), name="watcher")
    watcher.start()
    dripper = threading.Thread(target=_drip, args=(attackers, watcher), name="dripper")
    dripper.start()

    normal: list[tuple[str, int, float]] = []  # (request, status, seconds)
    for n in range(rounds):
        for name, method, path, body, headers in _normal_requests(n):
            began = time.monotonic()
            status = _request(port, method, path, body, headers)
            normal.append((name, status, time.monotonic() - began))
    normal_done = time.monotonic() - started
    still_open = sum(1 for a in attackers if a.closed is None)
    watcher.join()
    dripper.join()
    figures: dict[str, Any] = {
        "attackers": dict(counts),
        "normal_requests": {
            name: dict(Counter(str(status) for n, status, _ in normal if n == name))
            for name in dict.fromkeys(n for n, _, _ in normal)
        },
        "normal_max_ms": round(max((s for _, _, s in normal), default=0) * 1000, 1),
        "normal_done_after_s": round(normal_done, 2),
        "attackers_open_when_normal_done": still_open,
        "closed": {},
    }
    for kind in counts:
        mine = [a for a in attackers if a.kind == kind]
        if not mine:
            continue
        times = [a.closed - a.opened for a in mine if a.closed is not None]
        figures["closed"][kind] = {
            "closed": len(times),
            "of": len(mine),
            "min_s": round(min(times), 2) if times else None,
            "max_s": round(max(times), 2) if times else None,
            "told": dict(Counter(a.told() for a in mine)),
        }
    for attacker in attackers:
        attacker.sock.close()
    return figures


class _Attacker:
    """One attacking connection: what it is, when it opened, when the function closed it."""

    def __init__(self, kind: str, sock: socket.socket, opened: float) -> None:
        self.kind = kind
        self.sock = sock
        self.opened = opened
        self.closed: float | None = None
        self.received = b""

    def told(self) -> str:
        """The status line it got before the close, or what happened instead."""
        if self.closed is None:
            return "still open"
        return self.received.split(b"\r\n", 1)[0].decode("latin-1") or "closed, no response"


def _watch(attackers: list[_Attacker], wait_s: float) -> None:
    """Read every attacker until the function closes it; note when."""
    deadline = time.monotonic() + wait_s
    with selectors.DefaultSelector() as selector:
        for attacker in attackers:
            selector.register(attacker.sock, selectors.EVENT_READ, attacker)
        left = len(attackers)
        while left and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.1):
                attacker = key.data
                try:
                    data = attacker.sock.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:  # reset: closed with unread bytes
                    data = b""
                if data:
                    attacker.received += data
                    continue
                attacker.closed = time.monotonic()
                selector.unregister(attacker.sock)
                left -= 1


def _drip(attackers: list[_Attacker], watcher: threading.Thread) -> None:
    """One more byte of body to each open dripping attacker, every ``_DRIP_S``."""
    while watcher.is_alive():
        for attacker in attackers:
            if attacker.kind == "dripping" and attacker.closed is None:
                with contextlib.suppress(OSError):  # closed meanwhile
                    attacker.sock.send(b"x")
        time.sleep(_DRIP_S)


def _normal_requests(n: int) -> list[tuple[str, str, str, bytes | None, dict[str, str]]]:
    event = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-type": "dev.knative-rag.query.request",
        "ce-source": "bench/slow-clients",
        "ce-id": f"normal-{n}-{time.time_ns()}",
    }
    return [
        ("POST /query", "POST", "/query", _QUERY, {"Content-Type": "application/json"}),
        ("POST /events", "POST", "/events", _QUERY, event),
        ("GET /metrics", "GET", "/metrics", None, {}),
        ("GET /readyz", "GET", "/readyz", None, {}),
    ]


def _request(port: int, method: str, path: str, body: bytes | None, headers: dict[str, str]) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    except OSError:
        return 0  # no answer at all
    finally:
        conn.close()


def main() -> None:
    from bench import corpus as synthetic
    from bench.services import moto_server, ollama_double, use_bucket
    from bench.soak import function
    from functions.storage import open_store

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, default in [("dripping", 64), ("stalled", 16), ("partial", 16), ("silent", 16)]:
        parser.add_argument(f"--{name}", type=int, default=default)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "slow_clients.json")
    args = parser.parse_args()
    work = ROOT / "bench" / ".work-slow-clients"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    with moto_server(work) as s3, ollama_double(work, 64) as ollama:
        aws = use_bucket(s3, "bench-knative-rag-slow")
        store_uri = "s3://bench-knative-rag-slow/rag"
        synthetic.publish_synthetic(open_store(store_uri), synthetic.texts(500), 64, work / "a")
        env = {
            **os.environ,
            **aws,
            "OLLAMA_HOST": ollama,
            "RAG_STORE_URI": store_uri,
            "RAG_LLM_PROVIDER": "none",
        }
        with function(env, work, "slow") as (port, _):
            figures = attack(
                port,
                dripping=args.dripping,
                stalled=args.stalled,
                partial=args.partial,
                silent=args.silent,
                rounds=args.rounds,
            )
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "settings": "defaults: RAG_HEADER_TIMEOUT_S 10, RAG_BODY_TIMEOUT_S 10, "
        "RAG_BODY_IDLE_TIMEOUT_S 5, RAG_MAX_CONNECTIONS 256, RAG_MAX_CONCURRENCY 64",
        **figures,
    }
    print(json.dumps(results, indent=2))
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
