"""The benchmark's services, each in its own process on a loopback port: moto's S3 server, the
Ollama double, and the query function itself (the same command the container runs)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if request(port, "GET", path)[0] < 500:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port}{path}")


@contextmanager
def spawned(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def moto_server(work: Path) -> Iterator[str]:
    port = free_port()
    with spawned(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        dict(os.environ),
        work / "moto.log",
    ):
        wait_http(port, "/")
        yield f"http://127.0.0.1:{port}"


@contextmanager
def ollama_double(work: Path, dim: int) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "OLLAMA_DOUBLE_DIM": str(dim)}
    command = [sys.executable, "-m", "uvicorn", "tests.ollama_double:create_app", "--factory"]
    with spawned(
        [*command, "--port", str(port), "--log-level", "warning"], env, work / "ollama.log"
    ):
        wait_http(port, "/api/tags")
        yield f"http://127.0.0.1:{port}"


def use_bucket(s3: str, bucket: str) -> dict[str, str]:
    """Point this process's boto3 at moto's server ``s3``, create ``bucket``; returns the AWS_*
    variables the spawned processes need too, and ``RAG_ON_DEMAND=off``: moto reads a whole
    object for every ranged GET, so answering on demand is measured on bench/range_s3.py
    (bench/cold_path.py), and a function on moto downloads its index before it answers (the
    load path these benchmarks measure)."""
    aws = {
        "AWS_ENDPOINT_URL_S3": s3,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": "us-east-1",
        "RAG_ON_DEMAND": "off",
    }
    os.environ.update(aws)
    import boto3

    boto3.client("s3").create_bucket(Bucket=bucket)
    return aws


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident set (VmHWM), MB."""
    return _status_mb(pid, "VmHWM")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """The process's resident set now (VmRSS; or RssAnon, RssFile: its parts), MB."""
    return _status_mb(pid, field)


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def first_200(proc: subprocess.Popen[bytes], port: int, body: bytes, log: Path) -> bytes:
    """POST ``body`` to a spawned function's /query every 5 ms until it answers 200 (the body
    of that answer); fails if the process dies or two minutes pass."""
    deadline = time.monotonic() + 120
    while True:
        try:
            status, payload = request(port, "POST", "/query", body)
            if status == 200:
                return payload
        except OSError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"no 200 from the function: see {log}")
        time.sleep(0.005)


def cold_start(env: dict[str, str], mode: str, query: str, work: Path) -> dict[str, Any]:
    """Spawn ``python -m functions`` and POST /query until the first 200; returns the breakdown."""
    port = free_port()
    env = {**env, "PORT": str(port), "RAG_CACHE_DIR": str(work / f"cache-{port}")}
    body = json.dumps({"query": query, "mode": mode, "top_k": 5}).encode()
    spawned_at = time.time()
    with spawned([sys.executable, "-m", "functions"], env, work / f"function-{port}.log") as proc:
        payload = first_200(proc, port, body, work / f"function-{port}.log")
        first_at = time.time()
        ready = json.loads(request(port, "GET", "/readyz")[1])
        rss = peak_rss_mb(proc.pid)
    # A pod's emptyDir goes with the pod; left here, its dirty pages would be written back
    # during the next cold start and slow it down.
    shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)
    timings = ready["timings_s"]
    return {
        "mode": mode,
        "total_s": first_at - spawned_at,
        "interpreter_s": ready["started_at"] - spawned_at,
        # The phases below overlap: the web framework imports while the index downloads.
        "framework_imported_s": timings["imports"],
        "store_client_s": timings["store_client"],
        "download_and_verify_s": timings["fetch_and_verify"],
        "map_s": timings["map"],
        "model_check_s": timings["model_check"],
        "process_to_ready_s": ready["ready_at"] - ready["started_at"],
        "ready_to_first_200_s": first_at - ready["ready_at"],
        "peak_rss_mb": rss,
        "answer_type": json.loads(payload)["answer_type"],
    }
