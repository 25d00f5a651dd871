"""Query load over HTTP against a running function, and raw read speed of an artifact."""

from __future__ import annotations

import http.client
import json
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.services import free_port, peak_rss_mb, request, spawned, wait_http
from functions.artifact import DATA_FILES
from functions.catalog import index_key
from functions.storage import open_store

WORK = Path(__file__).resolve().parent / ".work"


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"p50_ms": pick(0.50) * 1000, "p95_ms": pick(0.95) * 1000, "p99_ms": pick(0.99) * 1000}


def read_files_s(store_uri: str, index_id: str) -> float:
    """Time to stream the artifact's files from the store (4 parallel GETs, no hashing)."""
    store = open_store(store_uri)
    client, bucket = store.client, store.bucket  # type: ignore[attr-defined]

    def read(name: str) -> None:
        body = client.get_object(Bucket=bucket, Key=f"{store.prefix}/{index_key(index_id, name)}")[
            "Body"
        ]  # type: ignore[attr-defined]
        for _ in body.iter_chunks(8 * 1024 * 1024):
            pass

    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(read, DATA_FILES))
    return time.perf_counter() - started


def outcomes(
    port: int,
    bodies: list[bytes],
    concurrency: int,
    total: int,
    busy: Callable[[], bool] | None = None,
) -> tuple[list[tuple[int, float, str]], float]:
    """``total`` POST /query over ``concurrency`` keep-alive connections (more while ``busy()``
    says something else still needs the load): each request's status, seconds and X-Index-Id,
    and the wall time. A connection error counts as status 0 and the worker reconnects: nothing
    is lost silently."""
    results: list[tuple[int, float, str]] = []
    issued = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal issued
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        headers = {"Content-Type": "application/json"}
        while True:
            with lock:
                n = issued
                if n >= total and (busy is None or not busy()):
                    break
                issued += 1
            started = time.perf_counter()
            try:
                conn.request("POST", "/query", body=bodies[n % len(bodies)], headers=headers)
                response = conn.getresponse()
                response.read()
                status, index_id = response.status, response.getheader("X-Index-Id", "")
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                status, index_id = 0, ""
            results.append((status, time.perf_counter() - started, index_id))
        conn.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def drive(
    port: int, bodies: list[bytes], concurrency: int, total: int
) -> tuple[list[float], int, float]:
    """Latencies of every request, how many were not 200, and the wall time."""
    results, wall = outcomes(port, bodies, concurrency, total)
    return [s for _, s, _ in results], sum(status != 200 for status, _, _ in results), wall


def query_load(
    env: dict[str, str], queries: list[str], plan: list[tuple[int, int]]
) -> dict[str, Any]:
    port = free_port()
    env = {**env, "PORT": str(port), "RAG_CACHE_DIR": str(WORK / "cache-load")}
    results: dict[str, Any] = {}
    with spawned([sys.executable, "-m", "functions"], env, WORK / "function-load.log") as proc:
        wait_http(port, "/readyz")
        while request(port, "GET", "/readyz")[0] != 200:
            time.sleep(0.05)
        results["rss_after_load_mb"] = peak_rss_mb(proc.pid)
        bodies = [
            json.dumps({"query": q, "mode": "retrieve", "top_k": 10}).encode() for q in queries
        ]
        for concurrency, total in plan:
            latencies, errors, wall = drive(port, bodies, concurrency, total)
            figures = {"requests": total, "errors": errors, "rps": total / wall}
            results[f"c{concurrency}"] = figures = {**figures, **percentiles(latencies)}
            print(
                f"  retrieve c={concurrency:<3} {figures['rps']:7.1f} req/s  "
                f"p50 {figures['p50_ms']:.1f} ms  p95 {figures['p95_ms']:.1f} ms  "
                f"p99 {figures['p99_ms']:.1f} ms  errors {errors}",
                flush=True,
            )
        results["rss_after_queries_mb"] = peak_rss_mb(proc.pid)
    return results
