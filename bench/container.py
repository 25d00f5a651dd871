"""Container cold start and SIGTERM drain, measured with the real image and engine.

    source ../shared/tools/container-base.sh && make image && python bench/container.py

Publishes a 10k-chunk synthetic index (768-d) to moto's S3 server, then, per repeat, runs the
image as the container tests do (read-only root, tmpfs /tmp, arbitrary uid, no capabilities)
and times `run` → /readyz 200 → first /query 200. Then sends SIGTERM while a 2 s request is in
flight and times the drain. Prints the figures and saves bench/container.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as synthetic  # noqa: E402
from bench.services import free_port, moto_server, request, use_bucket  # noqa: E402
from functions.storage import open_store  # noqa: E402
from tests.ollama_double import OllamaDouble  # noqa: E402
from tests.servers import serve, strict_container  # noqa: E402

WORK = ROOT / "bench" / ".work" / "container"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--image", default="localhost/knative-rag:dev")
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    run = shlex.split(os.environ.get("RUN", "docker run"))
    engine = run[0]
    WORK.mkdir(parents=True, exist_ok=True)
    size = json.loads(
        subprocess.run(
            [engine, "image", "inspect", args.image], capture_output=True, text=True, check=True
        ).stdout
    )[0]["Size"]
    double = OllamaDouble({"nomic-embed-text": 768})
    with moto_server(WORK) as s3, serve(double.app) as ollama:
        aws = use_bucket(s3, "bench-container")
        store_uri = "s3://bench-container/rag"
        synthetic.publish_synthetic(
            open_store(store_uri), synthetic.texts(args.chunks), 768, WORK / "artifact"
        )
        body = json.dumps({"query": "rivers and bridges", "mode": "retrieve"}).encode()

        def start(port: int, name: str) -> float:
            env = {
                **aws,
                "PORT": str(port),
                "RAG_STORE_URI": store_uri,
                "OLLAMA_HOST": ollama,
                "RAG_LLM_PROVIDER": "none",
                "RAG_DOWNLOAD_CONCURRENCY": "1",
            }
            flags = strict_container(name, env)
            started = time.monotonic()
            subprocess.run([*run, "-d", *flags, args.image], check=True, capture_output=True)
            return started

        runs = []
        for _ in range(args.repeat):
            port, name = free_port(), f"bench-{uuid.uuid4().hex[:8]}"
            started = start(port, name)
            ready = first = None
            while first is None and time.monotonic() - started < 120:
                try:
                    if ready is None and request(port, "GET", "/readyz")[0] == 200:
                        ready = time.monotonic() - started
                    if ready is not None and request(port, "POST", "/query", body)[0] == 200:
                        first = time.monotonic() - started
                except OSError:
                    time.sleep(0.01)
            subprocess.run([engine, "rm", "-f", name], capture_output=True, check=False)
            runs.append({"run_to_ready_s": ready, "run_to_first_query_s": first})
            print(f"  run -> ready {ready:.2f} s, -> first query {first:.2f} s", flush=True)

        port, name = free_port(), f"bench-{uuid.uuid4().hex[:8]}"
        start(port, name)
        while True:
            try:
                if request(port, "GET", "/readyz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.05)
        double.latency_s = 2.0
        outcome: dict[str, float] = {}

        def slow() -> None:
            began = time.monotonic()
            outcome["status"] = request(port, "POST", "/query", body)[0]
            outcome["request_s"] = time.monotonic() - began

        thread = threading.Thread(target=slow)
        thread.start()
        time.sleep(0.3)
        signalled = time.monotonic()
        subprocess.run([engine, "kill", "--signal", "TERM", name], check=True, capture_output=True)
        exit_code = int(
            subprocess.run(
                [engine, "wait", name], capture_output=True, text=True, check=True
            ).stdout
        )
        drain = {"sigterm_to_exit_s": time.monotonic() - signalled, "exit_code": exit_code}
        thread.join()
        drain.update(outcome)
        subprocess.run([engine, "rm", "-f", name], capture_output=True, check=False)
    result = {
        "image": args.image,
        "image_bytes": size,
        "chunks": args.chunks,
        "store": "moto's S3 server on the host loopback",
        "median_run_to_ready_s": statistics.median(r["run_to_ready_s"] for r in runs),
        "median_run_to_first_query_s": statistics.median(r["run_to_first_query_s"] for r in runs),
        "runs": runs,
        "drain": drain,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))
    (ROOT / "bench" / "container.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
