"""Hardening under load: many retrieve queries on a large index, the same with hot reloads, and
overload beyond the concurrency limit.

    python bench/soak.py [--size 100000] [--dim 768] [--requests 20000] [--concurrency 32]
                         [--reloads 20] [--overload-limit 8] [--overload-concurrency 64]

Everything runs on this machine over loopback, each in its own process: moto's S3 server, the
Ollama double and ``python -m functions`` (the container's command), with the load generator in
this process. Two indexes of ``--size`` chunks are published; the hot-reload phase moves the
channel between them ``--reloads`` times (promote, then an ``index.published`` CloudEvent to
``/events``) while the queries run, so each reload downloads, verifies and swaps a whole index.
The overload phase starts a second function with ``RAG_MAX_CONCURRENCY=--overload-limit`` and
drives it at ``--overload-concurrency``. Writes bench/soak.json.

``run_soak`` is also what ``tests/test_soak.py`` runs, with small counts, in ``make test``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as synthetic  # noqa: E402
from bench.load import outcomes  # noqa: E402
from bench.services import (  # noqa: E402
    free_port,
    moto_server,
    ollama_double,
    peak_rss_mb,
    request,
    spawned,
    use_bucket,
)
from functions.events import INDEX_PUBLISHED  # noqa: E402
from functions.storage import open_store  # noqa: E402
from index_builder.publish import promote  # noqa: E402

WORK = ROOT / "bench" / ".work-soak"
BUCKET = "bench-knative-rag-soak"


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (seconds), in milliseconds."""
    if not values:
        return {}
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    return {"p50_ms": pick(0.50), "p99_ms": pick(0.99), "max_ms": ordered[-1] * 1000}


def drive(
    port: int,
    bodies: list[bytes],
    concurrency: int,
    total: int,
    busy: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """``total`` POST /query at ``concurrency`` (more while ``busy()``); statuses, latencies by
    status, served ids."""
    results, wall = outcomes(port, bodies, concurrency, total, busy)
    statuses = Counter(status for status, _, _ in results)
    by_status = {
        str(code): percentiles([s for status, s, _ in results if status == code])
        for code in sorted(statuses)
    }
    return {
        "requests": len(results),
        "concurrency": concurrency,
        "wall_s": wall,
        "rps": len(results) / wall,
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "errors": sum(n for code, n in statuses.items() if code != 200),
        "latency_by_status": by_status,
        "served_index_ids": sorted({index_id for _, _, index_id in results if index_id}),
        **percentiles([s for status, s, _ in results if status == 200]),
    }


@contextmanager
def function(env: dict[str, str], work: Path, name: str) -> Iterator[tuple[int, int]]:
    """``python -m functions`` on a free port, once ready; yields (port, pid)."""
    port = free_port()
    env = {**env, "PORT": str(port), "RAG_CACHE_DIR": str(work / f"cache-{name}")}
    with spawned([sys.executable, "-m", "functions"], env, work / f"function-{name}.log") as proc:
        deadline = time.monotonic() + 300
        while True:
            try:
                if request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the function did not become ready: {work}/function-{name}.log")
            time.sleep(0.05)
        try:
            yield port, proc.pid
        finally:
            shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)


def problems(log: Path, after: int = 0) -> list[str]:
    """The function's warnings and errors (past the first ``after``): why a request failed."""
    lines = [
        line.strip()
        for line in log.read_text(errors="replace").splitlines()
        if ("WARNING" in line or "ERROR" in line) and "no API key configured" not in line
    ]
    return lines[after:]


def readyz(port: int) -> dict[str, Any]:
    status, body = request(port, "GET", "/readyz")
    return {"status": status, **json.loads(body)}


def reload_to(port: int, store_uri: str, index_id: str, n: int) -> float:
    """Move the channel to ``index_id``, announce it, and wait until the function serves it."""
    started = time.perf_counter()
    promote(open_store(store_uri), "stable", index_id)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(
            "POST",
            "/events",
            body=json.dumps({"index_id": index_id, "channel": "stable"}).encode(),
            headers={
                "Content-Type": "application/json",
                "ce-specversion": "1.0",
                "ce-type": INDEX_PUBLISHED,
                "ce-source": "bench/soak",
                "ce-id": f"soak-reload-{n}-{index_id}",
            },
        )
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    if response.status != 202:
        raise RuntimeError(f"index.published answered {response.status}")
    deadline = time.monotonic() + 300
    while readyz(port).get("index_id") != index_id:
        if time.monotonic() > deadline:
            raise RuntimeError(f"reload {n} to {index_id} did not complete: {readyz(port)}")
        time.sleep(0.02)
    return time.perf_counter() - started


def run_soak(
    env: dict[str, str],
    store_uri: str,
    index_ids: tuple[str, str],
    queries: list[str],
    work: Path,
    *,
    requests: int,
    concurrency: int,
    reloads: int,
    overload_limit: int,
    overload_concurrency: int,
    overload_requests: int,
) -> dict[str, Any]:
    """The three phases against functions serving ``store_uri``'s channel ``stable``."""
    env = {**env, "RAG_STORE_URI": store_uri, "RAG_INDEX": "stable", "RAG_LLM_PROVIDER": "none"}
    bodies = [json.dumps({"query": q, "mode": "retrieve", "top_k": 10}).encode() for q in queries]
    results: dict[str, Any] = {}
    with function(env, work, "soak") as (port, pid):
        results["steady"] = steady = drive(port, bodies, concurrency, requests)
        steady["function_log"] = problems(work / "function-soak.log")
        _print("steady", steady)

        # The same load with hot reloads spread over it, alternating between the two indexes.
        # The gaps adapt to how long reloads take, so that all of them land within the run
        # (expected to last about as long as the steady one).
        durations: list[float] = []
        failure: list[BaseException] = []
        running = threading.Event()

        def reloader() -> None:
            end = time.perf_counter() + steady["wall_s"]
            try:
                for n in range(reloads):
                    left = reloads - n
                    typical = statistics.median(durations) if durations else 0.0
                    gap = (end - time.perf_counter()) / (left + 1) - typical
                    time.sleep(max(0.05, gap))
                    if not running.is_set():
                        return
                    durations.append(reload_to(port, store_uri, index_ids[(n + 1) % 2], n))
            except BaseException as exc:
                failure.append(exc)

        running.set()
        thread = threading.Thread(target=reloader, name="reloader")
        thread.start()
        # If the reloads take longer than the requests, the load goes on until they are done:
        # every reload happens under load.
        reloading = drive(port, bodies, concurrency, requests, busy=thread.is_alive)
        running.clear()
        thread.join()
        if failure:
            raise failure[0]
        state = readyz(port)
        reloading.update(
            function_log=problems(work / "function-soak.log", after=len(steady["function_log"])),
            reloads_done=len(durations),
            reload_s=percentiles(durations),
            reload_outcomes=state["reloads"],
            peak_rss_mb=peak_rss_mb(pid),
        )
        results["with_reloads"] = reloading
        _print("with reloads", reloading)
        print(
            f"  {len(durations)} reloads, each {reloading['reload_s'].get('p50_ms', 0):.0f} ms "
            f"(p50) from promote to serving; outcomes {state['reloads']}",
            flush=True,
        )

    overload_env = {**env, "RAG_MAX_CONCURRENCY": str(overload_limit)}
    with function(overload_env, work, "overload") as (port, _):
        results["overload"] = overload = drive(
            port, bodies, overload_concurrency, overload_requests
        )
        overload["limit"] = overload_limit
        _print(f"overload (limit {overload_limit})", overload)
    return results


def _print(phase: str, figures: dict[str, Any]) -> None:
    line = (
        f"  {phase}: {figures['requests']} requests at c={figures['concurrency']}: "
        f"{figures['rps']:.0f} req/s, statuses {figures['statuses']}"
    )
    if "p50_ms" in figures:
        line += f", 200s p50 {figures['p50_ms']:.1f} ms p99 {figures['p99_ms']:.1f} ms"
    if "503" in figures["latency_by_status"]:
        fast = figures["latency_by_status"]["503"]
        line += (
            f", 503s p50 {fast['p50_ms']:.1f} ms p99 {fast['p99_ms']:.1f} ms "
            f"max {fast['max_ms']:.1f} ms"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--reloads", type=int, default=20)
    parser.add_argument("--overload-limit", type=int, default=8)
    parser.add_argument("--overload-concurrency", type=int, default=64)
    parser.add_argument("--overload-requests", type=int, default=5_000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "soak.json")
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    began = time.perf_counter()
    with moto_server(WORK) as s3, ollama_double(WORK, args.dim) as ollama:
        aws = use_bucket(s3, BUCKET)
        store_uri = f"s3://{BUCKET}/soak"
        print(f"publishing two indexes of {args.size} x {args.dim} ...", flush=True)
        first_corpus = synthetic.texts(args.size, seed=0)
        ids = (
            synthetic.publish_synthetic(
                open_store(store_uri), first_corpus, args.dim, WORK / "artifact-a"
            ),
            synthetic.publish_synthetic(
                open_store(store_uri),
                synthetic.texts(args.size, seed=1),
                args.dim,
                WORK / "artifact-b",
                channel=None,
            ),
        )
        for folder in ("artifact-a", "artifact-b"):
            shutil.rmtree(WORK / folder, ignore_errors=True)
        env = {
            **os.environ,
            **aws,
            "OLLAMA_HOST": ollama,
            "RAG_LOG_LEVEL": "WARNING",
            "RAG_DOWNLOAD_CONCURRENCY": "1",  # moto re-reads the object for every ranged GET
        }
        results = run_soak(
            env,
            store_uri,
            ids,
            first_corpus[:2000],
            WORK,
            requests=args.requests,
            concurrency=args.concurrency,
            reloads=args.reloads,
            overload_limit=args.overload_limit,
            overload_concurrency=args.overload_concurrency,
            overload_requests=args.overload_requests,
        )
    results = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "setup": (
            "moto S3, the Ollama double, the function and the load generator as separate "
            "processes on the same cores, over loopback; retrieve mode"
        ),
        "size": args.size,
        "dim": args.dim,
        **results,
        "bench_wall_s": time.perf_counter() - began,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out.relative_to(ROOT)} in {results['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
