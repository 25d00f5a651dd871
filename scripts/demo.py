"""``make demo``: build an index of ``docs/`` and ask the query function a question, end to end.

Runs offline: a local store folder, the local all-MiniLM-L6-v2 embedder, and an extractive
answer (no LLM). It uses the same commands a user runs: the index builder CLI, then the query
function under uvicorn on a free port, then ``POST /query`` over HTTP.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUESTION = sys.argv[1] if len(sys.argv) > 1 else "How do channels move from one index to the next?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    store = ROOT / ".demo" / "store"
    env = {
        **os.environ,
        "RAG_STORE_URI": str(store),
        "RAG_INDEX": "stable",
        "RAG_EMBED_PROVIDER": "local",
        "RAG_LLM_PROVIDER": "none",
        "RAG_CACHE_DIR": str(ROOT / ".demo" / "cache"),
        "HF_HUB_OFFLINE": "1",
    }
    build = [
        sys.executable,
        "-m",
        "index_builder",
        "build",
        "--source",
        str(ROOT / "docs"),
        "--channel",
        "stable",
        "--create-channel",
    ]
    print("$", " ".join(build[1:]), flush=True)
    subprocess.run(build, env=env, cwd=ROOT, check=True)

    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "functions.app:app",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        cwd=ROOT,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/readyz", timeout=2) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("query function did not become ready", file=sys.stderr)
                return 1
            time.sleep(0.2)
        body = json.dumps({"query": QUESTION, "top_k": 3, "mode": "answer"}).encode()
        request = urllib.request.Request(
            f"{base}/query", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            result = json.load(response)
        print(f"\nQ: {QUESTION}\nA ({result['answer_type']}): {result['answer']}\n")
        print(f"Sources (index {result['index_id']}):")
        for source in result["sources"]:
            print(f"  {source['score']:.3f}  {source['metadata'].get('source')}  [{source['id']}]")
        return 0
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
