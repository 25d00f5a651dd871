"""``python -m functions``: the container's command, as a real process."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import Ollama, Published, function_env
from .servers import function_process


def test_python_dash_m_functions_serves_and_stops_on_sigterm(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    with function_process(function_env(published.store_uri, ollama, tmp_path)) as running:
        response = running.client.post("/query", json={"query": "facts", "mode": "retrieve"})
        assert response.status_code == 200
        assert response.headers["x-index-id"] == published.index_id
    assert running.proc.returncode in (0, -signal.SIGTERM), running.output
    assert f"serving index {published.index_id}" in running.output


@pytest.mark.parametrize(
    ("store", "reason"),
    [
        ("missing-channel", "channels/missing.json does not exist"),
        ("missing-bucket", "bucket 'no-such-bucket-here' does not exist"),
        ("refused", "EndpointConnectionError"),
        ("silent", "not ready after 3 s"),
        ("oidc-issuer-alone", "RAG_OIDC_ISSUER and RAG_OIDC_AUDIENCE go together: set both"),
    ],
)
def test_python_dash_m_functions_exits_1_when_it_cannot_load(
    published: Published, ollama: Ollama, tmp_path: Path, store: str, reason: str
) -> None:
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    env = {
        "missing-channel": {"RAG_INDEX": "missing"},
        "missing-bucket": {"RAG_STORE_URI": "s3://no-such-bucket-here/rag"},
        "refused": {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"},
        "silent": {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{silent.getsockname()[1]}"},
        "oidc-issuer-alone": {"RAG_OIDC_ISSUER": "https://kubernetes.default.svc.cluster.local"},
    }[store]
    started = time.monotonic()
    with silent:
        done = subprocess.run(
            [sys.executable, "-m", "functions"],
            env={
                **os.environ,
                "PORT": "0",
                "RAG_STORE_URI": published.store_uri,
                "OLLAMA_HOST": ollama.url,
                "RAG_CACHE_DIR": str(tmp_path),
                "RAG_STARTUP_TIMEOUT_S": "3",
                **env,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1
    assert time.monotonic() - started < 15
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("knative-rag: exiting: ")
    assert reason in last
