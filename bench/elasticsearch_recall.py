"""Recall and latency of Elasticsearch's kNN against the artifact's exact search, by
``num_candidates``, and the builder's bulk-load rate.

    python bench/elasticsearch_recall.py [--chunks 10000] [--dim 768] [--queries 100]

Publishes the benchmark's synthetic corpus (the Ollama double's vectors: uniform on the sphere,
the hard case for an approximate index) into a local store, loads it into Elasticsearch with the
builder's own loader (``index_builder.publish.load``: the shipped mapping, hnsw m 16,
ef_construction 100, ``dot_product``), then asks the same queries of both: the exact top 10 from
``SearchIndex``, and a ``knn`` search with k 10 at each ``num_candidates``. LlamaIndex's
``ElasticsearchStore`` asks for 10 times ``top_k`` candidates (100 for a top 10).

Elasticsearch is ``$RAG_TEST_ES_URL``, else the one ``scripts/elasticsearch.py`` has running,
else one it starts (and stops). Prints the figures and saves them to
bench/elasticsearch_recall.json. On the test server (one node, 512 MB heap, the same two cores
as this script): not a production cluster's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.corpus import publish_synthetic, texts, vector  # noqa: E402
from functions.catalog import fetch_artifact, read_manifest  # noqa: E402
from functions.embeddings import normalize  # noqa: E402
from functions.search import SearchIndex  # noqa: E402
from functions.storage import LocalStore  # noqa: E402
from index_builder.elastic import Cluster  # noqa: E402
from index_builder.progress import Progress  # noqa: E402
from index_builder.publish import load  # noqa: E402

CANDIDATES = (100, 200, 500, 1000, 2000)
SCRIPT = [sys.executable, str(ROOT / "scripts" / "elasticsearch.py")]


def elasticsearch_server() -> tuple[str, bool]:
    """The URL of an Elasticsearch, and whether this script started it."""
    if url := os.environ.get("RAG_TEST_ES_URL"):
        return url, False
    running = subprocess.run([*SCRIPT, "url"], capture_output=True, text=True, check=False)
    if running.returncode == 0:
        return running.stdout.strip(), False
    started = subprocess.run([*SCRIPT, "start"], capture_output=True, text=True, check=True)
    return started.stdout.strip(), True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--candidates",
        default=",".join(map(str, CANDIDATES)),
        help="comma-separated num_candidates to measure (at most 10000)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "elasticsearch_recall.json")
    args = parser.parse_args()
    candidates_measured = [int(n) for n in args.candidates.split(",")]
    url, started = elasticsearch_server()
    cluster = Cluster(url, prefix=f"bench{os.getpid()}", replicas=0)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-es-") as tmp:
            store = LocalStore(Path(tmp) / "store")
            index_id = publish_synthetic(
                store, texts(args.chunks), args.dim, Path(tmp) / "work", channel=None
            )
            began = time.perf_counter()
            load(store, index_id, cluster, Progress(bars=False))
            load_s = time.perf_counter() - began
            manifest = read_manifest(store, index_id)
            exact = SearchIndex(fetch_artifact(store, manifest, Path(tmp) / "cache"))
            queries = normalize(
                np.stack([vector(f"question {n}", args.dim) for n in range(args.queries)])
            )
            truth = [[hit.record.id for hit in exact.search(q, 10)] for q in queries]
            client = cluster._client  # the builder's own client: it never calls GET /
            name = cluster.index_name(index_id)
            figures = {}
            for candidates in candidates_measured:
                recalls, times = [], []
                for query, expected in zip(queries, truth, strict=True):
                    started_at = time.perf_counter()
                    found = client.search(
                        index=name,
                        knn={
                            "field": "embedding",
                            "query_vector": query.tolist(),
                            "k": 10,
                            "num_candidates": candidates,
                        },
                        size=10,
                        source=False,
                    )
                    times.append(time.perf_counter() - started_at)
                    ids = {hit["_id"] for hit in found["hits"]["hits"]}
                    recalls.append(len(ids & set(expected)) / 10)
                figures[str(candidates)] = {
                    "recall_at_10": round(statistics.mean(recalls), 4),
                    "p50_ms": round(statistics.median(times) * 1000, 2),
                }
            client.indices.delete(index=name)
    finally:
        cluster.close()
        if started:
            subprocess.run([*SCRIPT, "stop"], check=False)
    results = {
        "chunks": args.chunks,
        "dim": args.dim,
        "queries": args.queries,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "bulk_load_s": round(load_s, 2),
        "bulk_load_chunks_per_s": round(args.chunks / load_s),
        "knn_by_num_candidates": figures,
    }
    print(
        f"{args.chunks} chunks x {args.dim}: loaded in {load_s:.1f} s "
        f"({results['bulk_load_chunks_per_s']} chunks/s)"
    )
    for candidates, figure in figures.items():
        print(
            f"  num_candidates {candidates:>5}: recall@10 {figure['recall_at_10']:.3f}, "
            f"p50 {figure['p50_ms']:.1f} ms"
        )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
