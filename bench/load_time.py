"""Load time of an N x D artifact from a local store, in a fresh process, as the function loads it.

    python bench/load_time.py [--chunks 100000] [--dim 768] [--repeat 5]

Publishes the benchmark's synthetic corpus (150-250 word texts, the Ollama double's vectors) into
a local store with the builder's writer. Then, per repeat, a new interpreter resolves the channel,
checks the sha256 of every block of every file (read in full, on all cores), maps the artifact and
runs two exact searches. Prints the figures and saves them to bench/load_time.json. The files are
in the page cache (just written): this is the load cost, not the disk's read speed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import publish_synthetic, texts  # noqa: E402
from functions.storage import LocalStore  # noqa: E402

_CHILD = """
import sys, time
from pathlib import Path
t0 = time.perf_counter()
import numpy as np
from functions.catalog import fetch_artifact, read_manifest
from functions.search import SearchIndex
from functions.storage import open_store
t1 = time.perf_counter()
store = open_store(sys.argv[1])
manifest = read_manifest(store, "stable")
artifact = fetch_artifact(store, manifest, Path(sys.argv[2]))
t2 = time.perf_counter()
index = SearchIndex(artifact)
t3 = time.perf_counter()
query = np.random.default_rng(0).standard_normal(index.dim).astype(np.float32)
hits = index.search(query, 5)
t4 = time.perf_counter()
hits = index.search(query, 5)
t5 = time.perf_counter()
print(t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = ROOT / "bench" / ".work" / f"load-{args.chunks}x{args.dim}"
    store = LocalStore(work / "store")
    if not (work / "store" / "channels" / "stable.json").exists():
        print(f"writing a {args.chunks} x {args.dim} artifact ...", flush=True)
        publish_synthetic(store, texts(args.chunks), args.dim, work / "artifact")
    sizes = {p.name: p.stat().st_size for p in (work / "artifact").iterdir()}
    runs = []
    for _ in range(args.repeat):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(store.root), str(work / "cache")],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        runs.append([float(x) for x in out.stdout.split()])
    median = np.median(np.array(runs), axis=0)
    result = {
        "chunks": args.chunks,
        "dim": args.dim,
        "vector_bytes": sizes["vectors.f32"],
        "artifact_bytes": sum(sizes.values()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "python": platform.python_version(),
        "store": "local folder (page cache warm)",
        "median_s": {
            "imports": median[0],
            "resolve_verify_sha256": median[1],
            "map": median[2],
            "first_search": median[3],
            "second_search": median[4],
            "load_total_excl_imports": median[1] + median[2],
        },
        "runs": runs,
    }
    for key, value in result["median_s"].items():
        print(f"{key:28} {value * 1000:9.1f} ms")
    total, vectors = result["artifact_bytes"] / 1e6, result["vector_bytes"] / 1e6
    print(f"artifact {total:.0f} MB (vectors {vectors:.0f} MB)")
    (ROOT / "bench" / "load_time.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
