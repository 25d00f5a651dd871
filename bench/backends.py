"""The three backends side by side on one index: the artifact (downloaded from the object store,
searched in memory) against Elasticsearch and PostgreSQL with pgvector (the index the builder
loaded there; nothing downloaded).

    python bench/backends.py [--size 100000] [--dim 768] [--repeat 3] [--out bench/backends.json]

One synthetic index (the benchmark corpus and the Ollama double's vectors, as bench/run.py makes
its large ones) is published to moto's S3 server, channel ``stable``, and loaded into
Elasticsearch by the builder's own loader (``index_builder.publish.load``: the mapping it ships,
replicas 0, the alias following the channel) under a prefix of this run's own, and into
PostgreSQL (the same loader: one transaction, HNSW, the channel's row) under a schema of its own.
Then, for each
backend, ``--repeat`` cold starts of ``python -m functions`` (the container's command), spawn to
the first 200 of a retrieve ``POST /query``, alternating backends; and one warm function each,
driven over HTTP at concurrency 1, 8 and 32 after a warm-up. Every query is embedded by the
Ollama double, instantly and alike for both backends. RAG_LLM_PROVIDER=none.

Everything runs on this machine: Elasticsearch (``$RAG_TEST_ES_URL``, else the one
``scripts/elasticsearch.py`` runs, else one it starts and stops), PostgreSQL
(``$RAG_TEST_PG_DSN``, else a pgserver this script starts and stops: PostgreSQL 16, pgvector 0.6,
shared_buffers 1 GB), moto, the double, the function and the load generator share its cores; the
load average is recorded at each phase. Writes
``--out``, adds "backends" to bench/results.json and redraws bench/results.png (needs matplotlib,
the ``bench`` extra). The index and its alias, and the schema, are deleted at the end, whatever
happens.

Over 400 lines: the three backends' setups, loads, footprints and the one table that compares
them are kept in one script, so that one command measures all three in the same conditions.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from elasticsearch.exceptions import GeneralAvailabilityWarning

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as synthetic  # noqa: E402
from bench.elasticsearch_recall import SCRIPT, elasticsearch_server  # noqa: E402
from bench.load import drive, percentiles  # noqa: E402
from bench.postgres_recall import postgres_server  # noqa: E402
from bench.run import chart, machine, median_runs  # noqa: E402
from bench.services import (  # noqa: E402
    free_port,
    moto_server,
    ollama_double,
    peak_rss_mb,
    request,
    rss_mb,
    spawned,
    use_bucket,
)
from functions.catalog import read_manifest  # noqa: E402
from functions.postgres import table_name  # noqa: E402
from functions.settings import Settings  # noqa: E402
from functions.storage import open_store  # noqa: E402
from index_builder.elastic import Cluster  # noqa: E402
from index_builder.postgres import HNSW, Database  # noqa: E402
from index_builder.progress import Progress  # noqa: E402
from index_builder.publish import load  # noqa: E402

# A folder per run: two runs at once must not clear each other's.
WORK = ROOT / "bench" / ".work" / f"backends-{os.getpid()}"
BUCKET = "bench-backends"
PLAN = ((1, 200), (8, 800), (32, 1600))  # (concurrency, requests)
WARM_UP = 100  # requests at concurrency 8 before the measured ones: connections, JIT, page-in
COMPARED = 100  # queries whose top 10 are compared between the backends
MB = 2**20
BACKENDS = ("artifact", "elasticsearch", "postgres")


def _memory_mb(pid: int) -> dict[str, float]:
    """The process's resident set now and at its peak (VmRSS, VmHWM)."""
    return {"rss_mb": rss_mb(pid), "peak_rss_mb": peak_rss_mb(pid)}


def _load_average() -> float:
    return round(os.getloadavg()[0], 2)


@contextmanager
def _function(env: dict[str, str], body: bytes) -> Iterator[tuple[int, int, float, float]]:
    """``python -m functions`` on a free port, once it answers ``body`` with a 200: its port,
    its pid, and when it was spawned and answered (epoch seconds)."""
    port = free_port()
    env = {**env, "PORT": str(port), "RAG_CACHE_DIR": str(WORK / f"cache-{port}")}
    log = WORK / f"function-{port}.log"
    spawned_at = time.time()
    with spawned([sys.executable, "-m", "functions"], env, log) as proc:
        deadline = time.monotonic() + 300
        while True:
            try:
                if request(port, "POST", "/query", body)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"no 200 from the function: see {log}")
            time.sleep(0.005)
        yield port, proc.pid, spawned_at, time.time()
    # A pod's emptyDir goes with the pod; left, its pages would be written back meanwhile.
    shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)


def cold_start(env: dict[str, str], body: bytes) -> dict[str, Any]:
    """Spawn to the first 200, its parts, and the function's own timings (``/readyz``)."""
    with _function(env, body) as (port, pid, spawned_at, first_at):
        ready = json.loads(request(port, "GET", "/readyz")[1])
        memory = _memory_mb(pid)
    return {
        "total_s": first_at - spawned_at,
        "interpreter_s": ready["started_at"] - spawned_at,
        "process_to_ready_s": ready["ready_at"] - ready["started_at"],
        "ready_to_first_200_s": first_at - ready["ready_at"],
        "peak_rss_mb": memory["peak_rss_mb"],
        "timings_s": ready["timings_s"],  # the phases overlap: imports run while the index loads
    }


def warm(env: dict[str, str], bodies: list[bytes]) -> dict[str, Any]:
    """One function under load: latency and throughput by concurrency, its memory, and the top
    10 of the first ``COMPARED`` queries."""
    with _function(env, bodies[0]) as (port, pid, _, _):
        figures: dict[str, Any] = {"memory_when_ready": _memory_mb(pid)}
        drive(port, bodies, 8, WARM_UP)
        for concurrency, total in PLAN:
            load_average = _load_average()
            latencies, errors, wall = drive(port, bodies, concurrency, total)
            figures[f"c{concurrency}"] = {
                "load_average_before": load_average,
                "requests": total,
                "errors": errors,
                "rps": total / wall,
                **percentiles(latencies),
            }
        figures["memory_after_load"] = _memory_mb(pid)
        figures["top10"] = [
            [hit["id"] for hit in json.loads(request(port, "POST", "/query", body)[1])["sources"]]
            for body in bodies[:COMPARED]
        ]
    return figures


def footprint(cluster: Cluster, name: str) -> dict[str, Any]:
    """Elasticsearch's heap, its JVM's resident set (when its /proc is readable here) and the
    index's store."""
    client = cluster._client  # the builder's own client: it never calls GET /
    (info,) = client.nodes.info(metric="process")["nodes"].values()
    try:
        jvm_rss_mb: float | None = _memory_mb(info["process"]["id"])["rss_mb"]
    except OSError:  # another machine's
        jvm_rss_mb = None
    (cat,) = client.cat.indices(index=name, format="json", bytes="b")
    segments = client.indices.stats(index=name, metric="segments")["indices"][name]["primaries"]
    with warnings.catch_warnings():  # _disk_usage is a technical preview, and says so
        warnings.simplefilter("ignore", GeneralAvailabilityWarning)
        usage = client.indices.disk_usage(index=name, run_expensive_tasks=True)[name]
    return {
        "version": info["version"],
        **_heap(cluster),
        "jvm_rss_mb": jvm_rss_mb,  # includes the index files Lucene has mapped and touched
        "index": name,
        "docs": int(cat["docs.count"]),
        "store_bytes": int(cat["store.size"]),
        "segments": segments["segments"]["count"],
        # _disk_usage: what the stored fields, the inverted index, the kNN vectors and graph
        # take, in all and by field (the fields over 1 % of the store).
        "disk_usage_bytes": {
            kind.removesuffix("_in_bytes"): size
            for kind, size in usage["all_fields"].items()
            if kind.endswith("_in_bytes")
        },
        "disk_usage_by_field_bytes": {
            field: figures["total_in_bytes"]
            for field, figures in usage["fields"].items()
            if figures["total_in_bytes"] > usage["store_size_in_bytes"] // 100
        },
    }


def _heap(cluster: Cluster) -> dict[str, float]:
    """The JVM heap's used, committed and max, MB (a snapshot: used moves with every GC)."""
    (node,) = cluster._client.nodes.stats(metric="jvm")["nodes"].values()
    heap = node["jvm"]["mem"]
    return {f"heap_{k}_mb": heap[f"heap_{k}_in_bytes"] / MB for k in ("used", "committed", "max")}


def publish_and_load(
    cluster: Cluster, database: Database, store_uri: str, corpus: list[str], dim: int
) -> dict[str, Any]:
    """Publish the synthetic index to channel stable, load it into Elasticsearch (its alias
    follows the channel) and PostgreSQL (its row follows); what each took, and the artifact's
    size."""
    started = time.perf_counter()
    synthetic.publish_synthetic(open_store(store_uri), corpus, dim, WORK / "artifact")
    build_s = time.perf_counter() - started
    manifest = read_manifest(open_store(store_uri), "stable")
    load_average = _load_average()
    started = time.perf_counter()
    load(open_store(store_uri), "stable", cluster, Progress(bars=False))
    load_s = time.perf_counter() - started
    return {
        "index_id": manifest.index_id,
        "chunks": manifest.counts.chunks,
        "build_and_publish_s": build_s,
        "artifact_bytes": sum(entry.size for entry in manifest.files.values()),
        "vector_bytes": manifest.files["vectors.f32"].size,
        # From the store's channel: download the artifact from moto, bulk-load, refresh, count,
        # write-block, alias.
        "bulk_load_s": load_s,
        "bulk_load_chunks_per_s": manifest.counts.chunks / load_s,
        "load_average_before_bulk_load": load_average,
        **_postgres_load(database, store_uri),
    }


def _postgres_load(database: Database, store_uri: str) -> dict[str, Any]:
    """Load the channel's index into PostgreSQL: download from moto, one transaction of binary
    COPY, HNSW build, count and facts; the row of channel stable follows."""
    load_average = _load_average()
    started = time.perf_counter()
    load(open_store(store_uri), "stable", database, Progress(bars=False))
    load_s = time.perf_counter() - started
    return {
        "postgres_load_s": load_s,
        "postgres_load_average_before": load_average,
    }


def postgres_footprint(database: Database, index_id: str) -> dict[str, Any]:
    """The table's and its HNSW index's sizes, and the server's memory settings."""
    table = f'"{database.schema}"."{table_name(index_id)}"'
    conn = database._conn
    [(version,)] = conn.execute("SHOW server_version").fetchall()
    [(pgvector,)] = conn.execute(
        "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
    ).fetchall()
    [(total, heap)] = conn.execute(
        "SELECT pg_total_relation_size(%s::regclass), pg_table_size(%s::regclass)", [table, table]
    ).fetchall()
    indexes = conn.execute(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid) FROM pg_index "
        "WHERE indrelid = %s::regclass",
        [table],
    ).fetchall()
    [(shared_buffers,)] = conn.execute("SHOW shared_buffers").fetchall()
    conn.rollback()
    return {
        "version": f"PostgreSQL {version}, pgvector {pgvector}",
        "hnsw": HNSW,
        "shared_buffers": shared_buffers,
        "total_bytes": total,
        "table_bytes": heap,  # the rows, their TOASTed vectors and metadata
        "index_bytes": dict(indexes),
    }


def measure(
    envs: dict[str, dict[str, str]], corpus: list[str], repeat: int
) -> dict[str, dict[str, Any]]:
    """Cold starts (alternating backends, so that a busy moment on the machine hits both), then
    one warm function per backend; the top 10 they agree on."""
    bodies = [
        json.dumps({"query": q, "mode": "retrieve", "top_k": 10}).encode() for q in corpus[:2000]
    ]
    first = bodies[min(123, len(bodies) - 1)]
    figures: dict[str, dict[str, Any]] = {name: {"runs": []} for name in envs}
    for attempt in range(repeat):
        for name, env in envs.items():
            print(f"  cold start {attempt + 1}/{repeat}: {name} ...", flush=True)
            figures[name]["runs"].append(cold_start(env, first))
    for name, env in envs.items():
        runs = figures[name].pop("runs")
        median = median_runs(runs)
        median["timings_s"] = median_runs([run["timings_s"] for run in runs])
        figures[name]["cold_start"] = {"retrieve": {"median": median, "runs": runs}}
        print(f"  warm {name}: {len(PLAN)} load runs ...", flush=True)
        figures[name]["query_load"] = warm(env, bodies)
    found = {name: figures[name]["query_load"].pop("top10") for name in envs}
    for name in envs:
        if name != "artifact":
            pairs = zip(found["artifact"], found[name], strict=True)
            agreement = [len(set(a) & set(b)) / 10 for a, b in pairs]
            figures[name]["top10_agreement_with_artifact"] = sum(agreement) / len(agreement)
    return figures


def table(record: dict[str, Any]) -> str:
    """The figures as a readable table."""
    rows: list[tuple[str, list[str]]] = []
    cold = [record[b]["cold_start"]["retrieve"]["median"] for b in BACKENDS]
    loads = [record[b]["query_load"] for b in BACKENDS]
    rows.append(("cold start, spawn to first 200 (s)", [f"{c['total_s']:.2f}" for c in cold]))
    rows.append(("  process start to ready (s)", [f"{c['process_to_ready_s']:.2f}" for c in cold]))
    rows.append(("  ready to first 200 (s)", [f"{c['ready_to_first_200_s']:.3f}" for c in cold]))
    rows.append(("  peak RSS at first 200 (MB)", [f"{c['peak_rss_mb']:.0f}" for c in cold]))
    for concurrency, _ in PLAN:
        run = [load[f"c{concurrency}"] for load in loads]
        rows.append((f"c={concurrency}: requests/s", [f"{r['rps']:.1f}" for r in run]))
        rows.append(
            (
                f"c={concurrency}: p50 / p95 (ms)",
                [f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}" for r in run],
            )
        )
        rows.append((f"c={concurrency}: errors", [str(r["errors"]) for r in run]))
    memory = [load["memory_after_load"]["rss_mb"] for load in loads]
    rows.append(("function RSS after the load runs (MB)", [f"{m:.0f}" for m in memory]))
    width = max(len(label) for label, _ in rows)
    lines = [f"{'':<{width}}" + "".join(f"  {name:>14}" for name in BACKENDS)]
    lines += [f"{label:<{width}}" + "".join(f"  {v:>14}" for v in values) for label, values in rows]
    index, es, pg = record["index"], record["elasticsearch_footprint"], record["postgres_footprint"]
    jvm_rss = f"{es['jvm_rss_mb']:.0f} MB" if es["jvm_rss_mb"] is not None else "unknown"
    fields = sorted(es["disk_usage_by_field_bytes"].items(), key=lambda item: -item[1])
    lines += [
        f"index {index['chunks']} chunks x {record['dim']}: artifact "
        f"{index['artifact_bytes'] / MB:.0f} MiB (vectors {index['vector_bytes'] / MB:.0f} MiB), "
        f"Elasticsearch store {es['store_bytes'] / MB:.0f} MiB in {es['segments']} segments",
        "Elasticsearch store by field: "
        + ", ".join(f"{field} {size / MB:.0f} MiB" for field, size in fields[:5]),
        f"bulk load {index['bulk_load_s']:.0f} s ({index['bulk_load_chunks_per_s']:.0f} chunks/s); "
        f"heap used {es['heap_used_mb']:.0f} / committed {es['heap_committed_mb']:.0f} / max "
        f"{es['heap_max_mb']:.0f} MB; JVM RSS {jvm_rss}",
        "recall@10 of Elasticsearch (num_candidates 1000) against the artifact's exact search: "
        f"{record['elasticsearch']['top10_agreement_with_artifact']:.3f}",
        f"PostgreSQL ({pg['version']}, HNSW m {pg['hnsw']['m']}, ef_construction "
        f"{pg['hnsw']['ef_construction']}): load {index['postgres_load_s']:.0f} s, table "
        f"{pg['table_bytes'] / MB:.0f} MiB, indexes "
        + ", ".join(f"{name} {size / MB:.0f} MiB" for name, size in pg["index_bytes"].items()),
        f"recall@10 of PostgreSQL (ef_search {record['postgres_ef_search']}) against the "
        f"artifact's exact search: {record['postgres']['top10_agreement_with_artifact']:.3f}",
        f"load average {record['load_average_at_start']} at start, "
        f"{record['load_average_at_end']} at the end",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=3, help="cold starts per backend")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "backends.json")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    record: dict[str, Any] = {
        "machine": machine(),
        "command": " ".join(["python", "bench/backends.py", *sys.argv[1:]]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "store": "moto's S3 server over loopback HTTP, RAG_DOWNLOAD_CONCURRENCY=1 (bench/run.py)",
        "embeddings": "Ollama double over loopback HTTP: every query embedded, both backends alike",
        "elasticsearch_setup": "single node on this machine, security off, replicas 0, "
        "RAG_ELASTICSEARCH_NUM_CANDIDATES 1000 (the default)",
        "postgres_setup": "pgserver on this machine (or $RAG_TEST_PG_DSN), shared_buffers 1GB, "
        "RAG_POSTGRES_POOL_SIZE 4, RAG_POSTGRES_EF_SEARCH the default",
        "load": f"retrieve, top_k 10, keep-alive HTTP; {WARM_UP} requests of warm-up at c=8 first",
        "size": args.size,
        "dim": args.dim,
        "repeat": args.repeat,
        "load_average_at_start": _load_average(),
    }
    url, started = elasticsearch_server()
    prefix = f"bench-{uuid.uuid4().hex[:10]}"
    cluster = Cluster(url, prefix=prefix, replicas=0)
    dsn, pg_server = postgres_server(WORK / "postgres")
    schema = prefix.replace("-", "_")
    database = Database(dsn, schema=schema)
    record["postgres_ef_search"] = Settings().postgres_ef_search
    try:
        with moto_server(WORK) as s3, ollama_double(WORK, args.dim) as ollama:
            aws = use_bucket(s3, BUCKET)
            store_uri = f"s3://{BUCKET}/n{args.size}"
            corpus = synthetic.texts(args.size)
            print(f"{args.size} chunks x {args.dim}: publishing and loading ...", flush=True)
            record["elasticsearch_before_load"] = _heap(cluster)
            record["index"] = publish_and_load(cluster, database, store_uri, corpus, args.dim)
            common = {
                **os.environ,
                **aws,
                "OLLAMA_HOST": ollama,
                "RAG_INDEX": "stable",
                "RAG_LLM_PROVIDER": "none",
                "RAG_LOG_LEVEL": "WARNING",
            }
            envs = {
                "artifact": {
                    **common,
                    "RAG_BACKEND": "artifact",
                    "RAG_STORE_URI": store_uri,
                    # moto re-reads the whole object for every ranged GET (see bench/run.py).
                    "RAG_DOWNLOAD_CONCURRENCY": "1",
                },
                "elasticsearch": {
                    **common,
                    "RAG_BACKEND": "elasticsearch",
                    "RAG_ELASTICSEARCH_URL": url,
                    "RAG_ELASTICSEARCH_INDEX_PREFIX": prefix,
                },
                "postgres": {
                    **common,
                    "RAG_BACKEND": "postgres",
                    "RAG_POSTGRES_DSN": dsn,
                    "RAG_POSTGRES_SCHEMA": schema,
                },
            }
            record.update(measure(envs, corpus, args.repeat))
            name = cluster.index_name(record["index"]["index_id"])
            record["elasticsearch_footprint"] = footprint(cluster, name)
            record["postgres_footprint"] = postgres_footprint(database, record["index"]["index_id"])
    finally:
        _delete(cluster, prefix)
        cluster.close()
        if started:
            subprocess.run([*SCRIPT, "stop"], check=False)
        database._conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        database._conn.commit()
        database.close()
        if pg_server is not None:
            pg_server.stop()  # type: ignore[attr-defined]
    shutil.rmtree(WORK, ignore_errors=True)  # kept after a failure: the function logs say why
    record["load_average_at_end"] = _load_average()
    record["bench_wall_s"] = time.perf_counter() - began
    print(table(record))
    args.out.write_text(json.dumps(record, indent=2) + "\n")
    results_path = ROOT / "bench" / "results.json"
    results = json.loads(results_path.read_text())
    out = os.path.relpath(args.out, ROOT)
    results["backends"] = {"figures": out, **record}
    results_path.write_text(json.dumps(results, indent=2) + "\n")
    try:
        chart(results, ROOT / "bench" / "results.png")
        drawn = " and bench/results.png"
    except ImportError:
        drawn = "; bench/results.png not redrawn: matplotlib is not installed (the bench extra)"
    print(f"wrote {out}, bench/results.json{drawn}")


def _delete(cluster: Cluster, prefix: str) -> None:
    """Delete every index of this run's prefix (its aliases go with it)."""
    client = cluster._client
    for name in client.indices.get(index=f"{prefix}-*", ignore_unavailable=True).body:
        client.options(ignore_status=404).indices.delete(index=name)
    left = client.indices.get(index=f"{prefix}-*", ignore_unavailable=True).body
    assert not left, f"left in Elasticsearch: {sorted(left)}"


if __name__ == "__main__":
    main()
