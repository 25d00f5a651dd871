"""Recall and latency of pgvector's HNSW search against the artifact's exact search, by
``hnsw.ef_search``, the exact (filtered) search's latency, and the builder's load rate.

    python bench/postgres_recall.py [--chunks 10000] [--dim 768] [--queries 100]

Publishes the benchmark's synthetic corpus (the Ollama double's vectors: uniform on the sphere,
the hard case for an approximate index) into a local store, loads it into PostgreSQL with the
builder's own loader (``index_builder.publish.load``: one transaction, binary COPY, HNSW m 32,
ef_construction 200, ``vector_ip_ops``), then asks the same queries of both: the exact top 10 from
``SearchIndex``, and the function's own search (``PostgresSearcher``) at each
``RAG_POSTGRES_EF_SEARCH``; then the same queries with a filter that admits every chunk, which
the function answers exactly (a sequential scan).

PostgreSQL is ``$RAG_TEST_PG_DSN``, else a pgserver (PostgreSQL 16, pgvector 0.6) this script
starts in a temporary folder and stops, with shared_buffers 1 GB (``SERVER_SETTINGS``). It
shares this machine's cores with the script: not a tuned server's latency. Prints the figures
and saves them to bench/postgres_recall.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
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
from functions.filters import Condition, FilterGroup  # noqa: E402
from functions.postgres import PostgresBackend  # noqa: E402
from functions.search import SearchIndex  # noqa: E402
from functions.storage import LocalStore  # noqa: E402
from index_builder.postgres import HNSW, Database  # noqa: E402
from index_builder.progress import Progress  # noqa: E402
from index_builder.publish import load  # noqa: E402

EF_SEARCH = (100, 200, 300, 400, 500, 600, 1000)


# What a server for 100k x 768 needs: its HNSW index (about 400 MB at m 32) in shared buffers;
# pgserver's default, 128 MB, makes every search read the graph through the OS page cache.
SERVER_SETTINGS = ("shared_buffers=1GB",)


def postgres_server(folder: Path) -> tuple[str, object | None]:
    """A connection string, and the server this script started (None: ``$RAG_TEST_PG_DSN``)."""
    if dsn := os.environ.get("RAG_TEST_PG_DSN"):
        return dsn, None
    from tests.postgres_server import start_postgres

    started = start_postgres(folder, SERVER_SETTINGS)
    return started.dsn, started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--ef-search",
        default=",".join(map(str, EF_SEARCH)),
        help="comma-separated hnsw.ef_search values to measure (at most 1000)",
    )
    parser.add_argument(
        "--m", type=int, default=HNSW["m"], help="HNSW m of the load (default: the builder's)"
    )
    parser.add_argument(
        "--ef-construction",
        type=int,
        default=HNSW["ef_construction"],
        help="HNSW ef_construction of the load (default: the builder's)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "postgres_recall.json")
    args = parser.parse_args()
    HNSW.update(m=args.m, ef_construction=args.ef_construction)  # what the loader builds
    ef_measured = [int(n) for n in args.ef_search.split(",")]
    schema = f"bench{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench-pg-") as tmp:
        dsn, server = postgres_server(Path(tmp) / "postgres")
        database = Database(dsn, schema=schema)
        try:
            store = LocalStore(Path(tmp) / "store")
            index_id = publish_synthetic(
                store, texts(args.chunks), args.dim, Path(tmp) / "work", channel=None
            )
            progress = Progress(bars=False)
            began = time.perf_counter()
            load(store, index_id, database, progress)
            load_s = time.perf_counter() - began
            manifest = read_manifest(store, index_id)
            exact = SearchIndex(fetch_artifact(store, manifest, Path(tmp) / "cache"))
            queries = normalize(
                np.stack([vector(f"question {n}", args.dim) for n in range(args.queries)])
            )
            truth = [[hit.record.id for hit in exact.search(q, 10)] for q in queries]
            figures = {}
            for ef in ef_measured:
                backend = PostgresBackend(dsn, schema=schema, ef_search=ef, timeout_s=60)
                searcher = backend.open(backend.locate(index_id).manifest, {})
                searcher.search(queries[0], 10)  # a connection, and the table's pages
                recalls, times = [], []
                for query, expected in zip(queries, truth, strict=True):
                    started_at = time.perf_counter()
                    hits = searcher.search(query, 10)
                    times.append(time.perf_counter() - started_at)
                    recalls.append(len({h.record.id for h in hits} & set(expected)) / 10)
                figures[str(ef)] = {
                    "recall_at_10": round(statistics.mean(recalls), 4),
                    "p50_ms": round(statistics.median(times) * 1000, 2),
                }
                backend.close()
            backend = PostgresBackend(dsn, schema=schema, timeout_s=60)
            searcher = backend.open(backend.locate(index_id).manifest, {})
            # Half the chunks by a string range: the function's exact path, with a list of
            # 5,000 admitted values at 10k chunks.
            half = FilterGroup((Condition("file_name", "<", f"doc-{args.chunks // 2:06d}.txt"),))
            times, recalls = [], []
            for query in queries[:20]:
                expected = {hit.record.id for hit in exact.search(query, 10, half)}
                started_at = time.perf_counter()
                hits = searcher.search(query, 10, half)
                times.append(time.perf_counter() - started_at)
                recalls.append(len({h.record.id for h in hits} & expected) / 10)
            filtered = {
                "filter": "file_name < the middle one (half the chunks)",
                "recall_at_10": round(statistics.mean(recalls), 4),
                "p50_ms": round(statistics.median(times) * 1000, 2),
            }
            backend.close()
            database.collect(set(), dry_run=False, incomplete_after=None)
            [(version,)] = database._conn.execute("SHOW server_version").fetchall()
            [(pgvector,)] = database._conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchall()
            database._conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
            database._conn.commit()
        finally:
            database.close()
            if server is not None:
                server.stop()  # type: ignore[attr-defined]
    phases = {phase.name: round(phase.seconds, 2) for phase in progress.phases}
    results = {
        "chunks": args.chunks,
        "dim": args.dim,
        "queries": args.queries,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}",
        "server": f"PostgreSQL {version}, pgvector {pgvector}",
        "load_s": round(load_s, 2),
        "load_phases_s": phases,
        "load_chunks_per_s": round(args.chunks / load_s),
        "hnsw": {**HNSW, "ops": "vector_ip_ops"},
        "search_by_ef_search": figures,
        "filtered_exact": filtered,
    }
    print(
        f"{args.chunks} chunks x {args.dim}: loaded in {load_s:.1f} s "
        f"({results['load_chunks_per_s']} chunks/s; {phases})"
    )
    for ef, figure in figures.items():
        print(
            f"  ef_search {ef:>4}: recall@10 {figure['recall_at_10']:.3f}, "
            f"p50 {figure['p50_ms']:.1f} ms"
        )
    print(
        f"  filtered (exact): recall@10 {filtered['recall_at_10']:.3f}, "
        f"p50 {filtered['p50_ms']:.1f} ms"
    )
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
