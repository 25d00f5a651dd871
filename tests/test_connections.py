"""Slow, silent and too many connections against a real ``python -m functions``, over real
sockets: the request head and body deadlines, and the bound on open connections
(functions/connections.py, functions/guards.py ``Limits``)."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx
import pytest

from bench.slow_clients import attack
from functions.connections import protocol

from .conftest import Ollama, Published, function_env
from .servers import function_process

SLACK_S = 2.0  # scheduling on two shared cores


def test_slow_and_silent_clients_hold_no_slot_and_are_closed_at_their_deadlines(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "RAG_HEADER_TIMEOUT_S": "4",
        "RAG_BODY_TIMEOUT_S": "4",
        "RAG_BODY_IDLE_TIMEOUT_S": "2",
    }
    with function_process(env) as running:
        port = running.client.base_url.port
        assert port is not None
        figures = attack(port, dripping=64, stalled=16, partial=16, silent=16, rounds=5)
        after = running.client.post("/query", json={"query": "rivers", "mode": "retrieve"})
    # Every normal request was answered while every attacker was still open.
    assert figures["normal_requests"] == {
        "POST /query": {"200": 5},
        "POST /events": {"200": 5},
        "GET /metrics": {"200": 5},
        "GET /readyz": {"200": 5},
    }
    assert figures["attackers_open_when_normal_done"] == 112, figures
    closed = figures["closed"]
    assert {kind: (c["closed"], c["of"], c["told"]) for kind, c in closed.items()} == {
        "dripping": (64, 64, {"HTTP/1.1 408 Request Timeout": 64}),
        "stalled": (16, 16, {"HTTP/1.1 408 Request Timeout": 16}),
        "partial": (16, 16, {"closed, no response": 16}),
        "silent": (16, 16, {"closed, no response": 16}),
    }, figures
    for kind, deadline in [("dripping", 4), ("stalled", 2), ("partial", 4), ("silent", 4)]:
        assert deadline - 0.2 <= closed[kind]["min_s"], (kind, figures)
        assert closed[kind]["max_s"] <= deadline + SLACK_S, (kind, figures)
    assert after.status_code == 200


def test_open_connections_are_bounded_and_new_ones_get_in(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    env = {
        **function_env(published.store_uri, ollama, tmp_path),
        "RAG_MAX_CONNECTIONS": "16",
        "RAG_HEADER_TIMEOUT_S": "60",  # only the bound can close them within this test
    }
    with function_process(env) as running:
        port = running.client.base_url.port
        assert port is not None
        silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
        time.sleep(0.5)
        with httpx.Client(base_url=str(running.client.base_url), timeout=10) as fresh:
            ready = fresh.get("/readyz").status_code
            query = fresh.post("/query", json={"query": "rivers", "mode": "retrieve"})
        time.sleep(0.5)
        open_ = [sock for sock in silent if _still_open(sock)]
        for sock in silent:
            sock.close()
    assert (ready, query.status_code) == (200, 200)
    # The oldest waiting connections made room: what is left of the 40 fits the bound with the
    # function's own client and the fresh one.
    assert len(open_) <= 16 - 1
    assert open_ == silent[len(silent) - len(open_) :]  # the newest ones stayed


def _still_open(sock: socket.socket) -> bool:
    sock.settimeout(0.05)
    try:
        return sock.recv(1) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("header_timeout_s", "max_connections"), [(0, 8), (1, 0)], ids=["no-deadline", "no-room"]
)
def test_the_protocol_refuses_limits_that_cannot_work(
    header_timeout_s: float, max_connections: int
) -> None:
    with pytest.raises(ValueError, match="header_timeout_s must be positive"):
        protocol(header_timeout_s=header_timeout_s, max_connections=max_connections)
