"""Cold start of the function served by func-python (Knative Functions) against
``python -m functions`` (uvicorn), side by side, at 10k and 100k chunks.

    python bench/func_cold_start.py [--chunks 10000 100000] [--repeat 3]

Publishes the benchmark's synthetic corpus (768-d, the Ollama double's vectors) to moto's S3 for
each size, then spawns each server in turn, ``--repeat`` times each, alternating: uvicorn is the
container's default command (``python -m functions``), func-python is what ``func`` deploys
(func's scaffolding runs ``func_python.http.serve(new)``; ``python -m functions.knative_function``
runs the same). Each run is timed from the spawn to the first 200 of a retrieve query, with its
readiness probe's 200 (``/readyz`` under uvicorn, ``/health/readiness`` under func-python) and
the phases the function reports in ``/readyz``. Both download the whole index from moto, one
stream per file, as ``bench/run.py`` (RAG_ON_DEMAND off, RAG_DOWNLOAD_CONCURRENCY 1: moto reads
a whole object per ranged GET). Prints the medians and saves bench/func_cold_start.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import publish_synthetic, texts  # noqa: E402
from bench.services import (  # noqa: E402
    first_200,
    free_port,
    moto_server,
    ollama_double,
    request,
    spawned,
    use_bucket,
)
from functions.storage import open_store  # noqa: E402

DIM = 768
SERVERS = {
    "uvicorn": ([sys.executable, "-m", "functions"], "/readyz"),
    "func-python": ([sys.executable, "-m", "functions.knative_function"], "/health/readiness"),
}


def cold_start(server: str, env: dict[str, str], work: Path) -> dict[str, Any]:
    """One cold start: spawn, poll the readiness probe and /query every 5 ms."""
    command, probe = SERVERS[server]
    port = free_port()
    env = {
        **env,
        "PORT": str(port),
        "LISTEN_ADDRESS": f"127.0.0.1:{port}",
        "RAG_CACHE_DIR": str(work / f"cache-{port}"),
    }
    body = json.dumps({"query": "a question", "mode": "retrieve", "top_k": 5}).encode()
    log = work / f"{server}-{port}.log"
    spawned_at = time.time()
    with spawned(command, env, log) as proc:
        ready_at = None
        deadline = time.monotonic() + 120
        while ready_at is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                if request(port, "GET", probe)[0] == 200:
                    ready_at = time.time()
            except OSError:
                pass
            if ready_at is None:
                time.sleep(0.005)
        if ready_at is None:
            raise RuntimeError(f"{server} never became ready: see {log}")
        first_200(proc, port, body, log)
        first_at = time.time()
        timings = json.loads(request(port, "GET", "/readyz")[1])
    shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)
    phases = timings["timings_s"]
    return {
        "probe_ready_s": ready_at - spawned_at,
        "first_200_s": first_at - spawned_at,
        "interpreter_s": timings["started_at"] - spawned_at,
        "process_to_ready_s": timings["ready_at"] - timings["started_at"],
        "imports_s": phases["imports"],
        "download_and_verify_s": phases["fetch_and_verify"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "func_cold_start.json")
    args = parser.parse_args()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rag-func-bench-") as tmp:
        work = Path(tmp)
        with moto_server(work) as s3, ollama_double(work, DIM) as ollama:
            aws = use_bucket(s3, "func-bench")
            env = {
                **os.environ,
                **aws,
                "OLLAMA_HOST": ollama,
                "RAG_LLM_PROVIDER": "none",
                "RAG_LOG_LEVEL": "WARNING",
                # As bench/run.py: moto re-reads a whole object for every ranged GET, so one
                # stream per file is the fast way there (on S3 it is the other way round).
                "RAG_DOWNLOAD_CONCURRENCY": "1",
            }
            for chunks in args.chunks:
                store_uri = f"s3://func-bench/c{chunks}"
                artifact = work / f"artifact-{chunks}"
                artifact.mkdir()
                publish_synthetic(open_store(store_uri), texts(chunks), DIM, artifact)
                shutil.rmtree(artifact)
                runs: dict[str, list[dict[str, Any]]] = {server: [] for server in SERVERS}
                for _ in range(args.repeat):
                    for server in SERVERS:  # alternating, so drift hits both alike
                        runs[server].append(
                            cold_start(server, {**env, "RAG_STORE_URI": store_uri}, work)
                        )
                results[str(chunks)] = {
                    server: {
                        key: round(statistics.median(run[key] for run in measured), 3)
                        for key in measured[0]
                    }
                    for server, measured in runs.items()
                }
    print(f"{'chunks':>7} {'server':<12} {'ready':>7} {'first 200':>9} {'interpreter':>11}")
    for chunks, by_server in results.items():
        for server, figures in by_server.items():
            print(
                f"{int(chunks):>7,} {server:<12} {figures['probe_ready_s']:6.2f}s "
                f"{figures['first_200_s']:8.2f}s {figures['interpreter_s']:10.2f}s"
            )
    saved = {
        "command": "python bench/func_cold_start.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": os.cpu_count(), "python": platform.python_version()},
        "dim": DIM,
        "repeat": args.repeat,
        "median_s": results,
    }
    args.out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
