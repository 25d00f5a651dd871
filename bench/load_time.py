"""Load time of an N x D artifact from a local store, in a fresh process, as the function loads it.

    python bench/load_time.py [--chunks 100000] [--dim 768] [--repeat 5]

Writes a synthetic artifact (random unit vectors, 150-250 word texts, a few metadata keys) into a
local store, then starts a new interpreter per repeat that resolves the channel, verifies every
file's sha256 (read in full), maps the artifact and runs the first exact search. Prints the
figures and saves them to bench/load_time.json. The files are in the page cache (just written):
this is the load cost, not the disk's read speed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from functions.artifact import (  # noqa: E402
    DATA_FILES,
    MANIFEST,
    PROBE_TEXT,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.catalog import Pointer, index_key  # noqa: E402
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


def synthesize(store: LocalStore, chunks: int, dim: int, work: Path) -> str:
    rng = np.random.default_rng(42)
    vocabulary = [f"w{i}" for i in range(5000)]
    vectors = rng.standard_normal((chunks, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    lengths = rng.integers(150, 251, chunks)
    words = rng.integers(0, len(vocabulary), int(lengths.sum()))
    records, start = [], 0
    for i, length in enumerate(lengths):
        text = " ".join(vocabulary[w] for w in words[start : start + length])
        start += length
        records.append(
            NodeRecord(
                f"doc-{i // 8}#{i % 8}",
                f"doc-{i // 8}",
                text,
                {"source": f"doc-{i // 8}.md", "lang": "en"},
            )
        )
    manifest = write_artifact(
        work,
        vectors=vectors,
        records=records,
        hashes=[content_hash("bench:model", r.text) for r in records],
        embedding=EmbeddingSpec(provider="bench", model="model", dim=dim),
        chunking=ChunkingSpec(chunk_size=512, chunk_overlap=64),
        counts=Counts(documents=chunks // 8, chunks=chunks, embedded=chunks, reused=0),
        probe=Probe(text=PROBE_TEXT, vector=[float(x) for x in vectors[0]]),
        created_at=datetime.now(UTC),
        builder_version="bench",
    )
    for name in DATA_FILES:
        store.upload(index_key(manifest.index_id, name), work / name)
    data = (work / MANIFEST).read_bytes()
    store.put(index_key(manifest.index_id), data)
    pointer = Pointer(
        index_id=manifest.index_id,
        manifest_sha256=hashlib.sha256(data).hexdigest(),
        published_at=datetime.now(UTC),
    )
    store.put("channels/stable.json", pointer.model_dump_json().encode())
    return manifest.index_id


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
        synthesize(store, args.chunks, args.dim, work / "artifact")
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
