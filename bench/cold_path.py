"""Cold start from a range-serving S3: the first answer on demand, then from memory; Lance beside.

    python bench/cold_path.py [--chunks 100000] [--dim 768] [--repeat 5] [--queries 200]
                              [--latency-ms 20] [--bandwidth-mbps 100] [--probes 16]
                              [--peers ivf_pq,hnsw_sq] [--out bench/cold_path.json]

The store is ``bench/range_s3.py`` in its own process: ranged GETs served by seeking, every
request delayed by ``--latency-ms`` and every response stream limited to ``--bandwidth-mbps``
(moto would read the whole object for every range). The vectors are ``bench/clustered.py``'s
clustered synthetic rows (fixed seeds), the texts the benchmark corpus's, the queries rows near
existing ones; the Ollama double embeds each query text as its query vector.

Per repeat, a fresh ``python -m functions`` (the container's command) is spawned and POSTed the
first query until it answers 200: the time from spawn to that answer, and the GETs and bytes the
store served until then. Then ``/readyz`` is polled until the index is in memory (the time until
the warm path serves), every query is asked once over HTTP at concurrency 1 (warm latency), and
the resident set is read (at the first answer, once warm, at its peak, and after the queries
split into the process's own memory and the mapped index files). After the repeats, as many
fresh functions each answer the first query in answer mode (the Ollama double's instant chat:
spawn to a generated answer, LlamaIndex's import included). Recall@10 of the cold path and of
the warm path is measured in this process with the function's own code over the same store
(``ColdIndex``, ``SearchIndex``), against the exact top 10, over all the queries. The Lance
peers (``bench/lance_peer.py``) run in the same invocation on the same store. Writes the
figures to ``--out`` and to results.json's ``cold_path``, and draws bench/cold_path.png. One
script run by path, like the other benchmarks: over 400 lines with its peers and its chart.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as synthetic  # noqa: E402
from bench.clustered import cached, recall  # noqa: E402
from bench.range_s3 import aws_env  # noqa: E402
from bench.run import machine  # noqa: E402
from bench.services import (  # noqa: E402
    first_200,
    free_port,
    ollama_double,
    peak_rss_mb,
    request,
    rss_mb,
    spawned,
)
from functions import backends, ivf  # noqa: E402
from functions.artifact import (  # noqa: E402
    PROBE_TEXT,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    Manifest,
    NodeRecord,
    Probe,
    content_hash,
    write_artifact,
)
from functions.embeddings import normalize  # noqa: E402

WORK = ROOT / "bench" / ".work"
BUCKET = "bench-cold"
K = 10


def prepare(base: Path, n: int, dim: int, queries: int) -> tuple[Path, dict[str, np.ndarray]]:
    """The clustered vectors, the queries and their exact top 10, cached in the folder the
    Lance peer uses too (it is also the range server's root: buckets are its folders)."""
    folder = base / f"clustered-{n}x{dim}"
    vectors, near, truth = cached(folder, n, dim, queries, K)
    return folder, {"vectors": vectors, "queries": near, "truth": truth}


def build(vectors: np.ndarray, work: Path) -> tuple[Manifest, float]:
    """Write the artifact the builder writes for these vectors (cached); its build seconds."""
    folder = work / "artifact"
    built = work / "artifact-build.json"
    if (folder / "manifest.json").exists() and built.exists():
        cached = json.loads(built.read_text())
        if cached.get("layout") == ivf.CONTIGUOUS:  # else written before rows were laid out
            manifest = Manifest.model_validate_json((folder / "manifest.json").read_bytes())
            return manifest, cached["build_s"]
    shutil.rmtree(folder, ignore_errors=True)
    n, dim = vectors.shape
    texts = synthetic.texts(n)
    records = [
        NodeRecord(f"doc-{i:07d}.txt#0", f"doc-{i:07d}.txt", text, {"topic": i % 13})
        for i, text in enumerate(texts)
    ]
    started = time.perf_counter()
    manifest = write_artifact(
        folder,
        vectors=np.ascontiguousarray(vectors, dtype=np.float32),
        records=records,
        hashes=[content_hash("ollama:nomic-embed-text", r.text) for r in records],
        embedding=EmbeddingSpec(provider="ollama", model="nomic-embed-text", dim=dim),
        chunking=ChunkingSpec(chunk_size=512, chunk_overlap=64),
        counts=Counts(documents=n, chunks=n, embedded=n, reused=0),
        probe=Probe(
            text=PROBE_TEXT, vector=[float(x) for x in normalize(synthetic.vector(PROBE_TEXT, dim))]
        ),
        created_at=datetime.now(UTC),
        builder_version="bench",
    )
    build_s = time.perf_counter() - started
    built.write_text(json.dumps({"build_s": build_s, "layout": ivf.CONTIGUOUS}))
    return manifest, build_s


def publish_into(root: Path, folder: Path, manifest: Manifest) -> None:
    """Publish the artifact into the range server's folder and point ``stable`` at it."""
    from functions.catalog import read_channel
    from functions.storage import LocalStore
    from index_builder.publish import publish

    store = LocalStore(root / BUCKET)
    try:
        etag: str | None = read_channel(store, "stable")[1]
    except Exception:
        etag = None
    publish(store, folder, manifest, channel="stable", expected_etag=etag)


class RangeServer:
    """bench/range_s3.py in its own process."""

    def __init__(self, root: Path, latency_ms: float, bandwidth_mbps: float, log: Path) -> None:
        command = [
            sys.executable,
            str(ROOT / "bench" / "range_s3.py"),
            "--root",
            str(root),
            "--latency-ms",
            str(latency_ms),
            "--bandwidth-mbps",
            str(bandwidth_mbps),
            "--port",
            "0",
        ]
        self._log = log.open("wb")
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=self._log)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http"):
            raise RuntimeError(f"the range server did not start: see {log}")
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self) -> dict[str, Any]:
        return json.loads(request(self.port, "GET", "/_bench/stats")[1])

    def reset(self) -> None:
        request(self.port, "POST", "/_bench/reset", b"{}")

    def configure(self, **knobs: float) -> None:
        """Set the latency (s) and bandwidth (B/s per stream; 0 = unlimited)."""
        request(self.port, "POST", "/_bench/config", json.dumps(knobs).encode())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self._log.close()


def ours(
    env: dict[str, str], server: RangeServer, truth: np.ndarray, queries: int, work: Path
) -> dict[str, Any]:
    """One cold start of the function, then its warm queries over HTTP."""
    port = free_port()
    env = {**env, "PORT": str(port), "RAG_CACHE_DIR": str(work / f"cache-{port}")}

    def body(i: int) -> bytes:
        return json.dumps({"query": f"bench query {i}", "mode": "retrieve", "top_k": K}).encode()

    def ask(i: int) -> tuple[int, bytes]:
        return request(port, "POST", "/query", body(i))

    server.reset()
    spawned_at = time.time()
    log = work / f"function-{port}.log"
    with spawned([sys.executable, "-m", "functions"], env, log) as proc:
        payload = first_200(proc, port, body(0), log)
        first_at = time.time()
        rss_first = rss_mb(proc.pid)
        deadline = time.monotonic() + 120
        first = server.stats()
        while True:
            ready = json.loads(request(port, "GET", "/readyz")[1])
            if ready.get("serving_from", "memory") == "memory" or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        warm_at = time.time()
        downloaded = server.stats()
        rss_warm = rss_mb(proc.pid)
        latencies = []
        for i in range(queries):
            started = time.perf_counter()
            status, _ = ask(i)
            latencies.append(time.perf_counter() - started)
            assert status == 200
        rss = peak_rss_mb(proc.pid)
        anon, mapped = rss_mb(proc.pid, "RssAnon"), rss_mb(proc.pid, "RssFile")
    shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)
    ids = [int(s["id"][4:11]) for s in json.loads(payload)["sources"]]
    return {
        "first_200_s": first_at - spawned_at,
        "gets_before_first_answer": first["gets"],
        "bytes_before_first_answer": first["bytes"],
        "first_answer_recall": recall([ids], truth[:1]),
        "warm_serves_after_s": warm_at - spawned_at,
        "bytes_until_warm": downloaded["bytes"],
        "warm_p50_ms": 1000 * statistics.median(latencies),
        "warm_p95_ms": 1000 * float(np.percentile(latencies, 95)),
        "rss_at_first_answer_mb": rss_first,
        "rss_when_warm_mb": rss_warm,
        "peak_rss_mb": rss,
        # after the queries: the process's own memory, and the index files' pages it maps
        "rss_anon_mb": anon,
        "rss_file_mb": mapped,
        "timings_s": ready.get("timings_s", {}),
    }


def answer_first(env: dict[str, str], work: Path) -> dict[str, Any]:
    """One cold start in answer mode: spawn to the first 200 of a generated answer (the Ollama
    double's instant chat), which waits for LlamaIndex's import after the index opened."""
    port = free_port()
    env = {
        **env,
        "PORT": str(port),
        "RAG_CACHE_DIR": str(work / f"cache-{port}"),
        "RAG_LLM_PROVIDER": "ollama",
    }
    body = json.dumps({"query": "bench query 0", "mode": "answer", "top_k": K}).encode()
    spawned_at = time.time()
    log = work / f"function-{port}.log"
    with spawned([sys.executable, "-m", "functions"], env, log) as proc:
        payload = first_200(proc, port, body, log)
        first_at = time.time()
    shutil.rmtree(env["RAG_CACHE_DIR"], ignore_errors=True)
    assert json.loads(payload)["answer_type"] == "generated", payload[:300]
    return {"answer_first_200_s": first_at - spawned_at}


def recalls(
    server: RangeServer,
    manifest: Manifest,
    queries: np.ndarray,
    truth: np.ndarray,
    probes: int,
    warm_probes: int | None,
    restore: dict[str, float],
) -> dict[str, Any]:
    """Recall@10 of the cold path (and its reads per query) and of the warm path (``warm_probes``
    nearest partitions, or exact), in process."""
    from functions.catalog import fetch_artifact
    from functions.cold import ColdIndex
    from functions.s3 import S3Store
    from functions.search import SearchIndex, checked_query

    server.configure(latency_s=0.0, bandwidth=0)
    try:
        os.environ.update(aws_env(server.url))
        store = S3Store(BUCKET)
        cold = ColdIndex(store, manifest, probes=probes)
        found = []
        for query in queries:
            exact, norm = checked_query(query, cold.dim, K)
            found.append([_row(hit) for hit in cold.search(exact, norm, K)])
            cold.close()  # every query cold: no partition kept from the one before
        cold_gets, cold_bytes = cold.gets / len(queries), cold.bytes / len(queries)
        cache = Path(tempfile.mkdtemp(prefix="cold-recall-"))
        warm = SearchIndex(fetch_artifact(store, manifest, cache), probes=warm_probes)
        warm_found = [[_row(hit) for hit in warm.search(query, K)] for query in queries]
        warm.close()
        shutil.rmtree(cache, ignore_errors=True)
    finally:
        server.configure(**restore)  # the simulation's knobs again, for the peers
        assert server.stats()["latency_s"] == restore["latency_s"]
    return {
        "cold_recall_at_10": recall(found, truth),
        "warm_recall_at_10": recall(warm_found, truth),
        "cold_gets_per_query": cold_gets,
        "cold_bytes_per_query": cold_bytes,
    }


def _row(hit: Any) -> int:
    """The vector's row in the benchmark's data (the artifact orders rows by partition)."""
    return int(hit.record.id[4:11])


def medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(run[k] for run in runs) for k in keys}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=100.0)
    parser.add_argument("--probes", type=int, default=16)
    parser.add_argument("--warm-search", choices=("auto", "exact", "partitions"), default="auto")
    parser.add_argument("--warm-probes", type=int, default=96)
    parser.add_argument("--peers", default="ivf_pq,hnsw_sq")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "cold_path.json", help="figures by size"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="where data and indexes are kept")
    args = parser.parse_args()
    n, dim = args.chunks, args.dim
    work = args.work / f"cold-{n}x{dim}"
    work.mkdir(parents=True, exist_ok=True)
    root, arrays = prepare(args.work, n, dim, args.queries)
    manifest, build_s = build(arrays["vectors"], work)
    publish_into(root, work / "artifact", manifest)
    table = {f"bench query {i}": [float(x) for x in q] for i, q in enumerate(arrays["queries"])}
    (work / "queries.json").write_text(json.dumps(table))
    print(f"{n} x {dim}: index {manifest.index_id}, built in {build_s:.1f} s", flush=True)

    server = RangeServer(root, args.latency_ms, args.bandwidth_mbps, work / "range_s3.log")
    os.environ["OLLAMA_DOUBLE_TABLE"] = str(work / "queries.json")
    results: dict[str, Any] = {}
    try:
        with ollama_double(work, dim) as ollama:
            env = {
                **os.environ,
                **aws_env(server.url),
                "RAG_STORE_URI": f"s3://{BUCKET}",
                "RAG_INDEX": "stable",
                "RAG_LLM_PROVIDER": "none",
                "RAG_ON_DEMAND_PROBES": str(args.probes),
                "RAG_WARM_SEARCH": args.warm_search,
                "RAG_WARM_PROBES": str(args.warm_probes),
                "OLLAMA_HOST": ollama,
            }
            runs = [
                ours(env, server, arrays["truth"], args.queries, work) for _ in range(args.repeat)
            ]
            # After every retrieve run: an answer-mode function starts its download too, and
            # its writes must not land in a retrieve run's cold start.
            for run in runs:
                run.update(answer_first(env, work))
        knobs = {"latency_s": args.latency_ms / 1000, "bandwidth": args.bandwidth_mbps * 1e6}
        warm_probes = backends.warm_probes(n, args.warm_search, args.warm_probes)
        quality = recalls(
            server, manifest, arrays["queries"], arrays["truth"], args.probes, warm_probes, knobs
        )
        results["knative-rag"] = {
            "median": {**medians(runs), **quality},
            "runs": runs,
            "probes": args.probes,
            "warm_search": "exact" if warm_probes is None else "partitions",
            "warm_probes": warm_probes,
            "partitions": _partitions(manifest),
            "artifact_bytes": sum(entry.size for entry in manifest.files.values()),
            "build_s": build_s,
        }
        _print("knative-rag", results["knative-rag"]["median"])
        for kind in filter(None, args.peers.split(",")):
            results[f"lance {kind}"] = _lance(kind, root, server, arrays, args)
            _print(f"lance {kind}", results[f"lance {kind}"]["median"])
    finally:
        server.stop()
    report = {
        "machine": machine(),
        "chunks": n,
        "dim": dim,
        "repeat": args.repeat,
        "queries": args.queries,
        "store": {
            "server": "bench/range_s3.py",
            "latency_ms": args.latency_ms,
            "bandwidth_mbps_per_stream": args.bandwidth_mbps,
        },
        "vectors": "bench/clustered.py: 2 sqrt(n) topics, Dirichlet sizes, spread U(0.6, 1.2); "
        "queries near existing rows (noise 0.5 / sqrt(dim)); seeds 0 and 1",
        "results": results,
    }
    _save(args.out, report)


def _partitions(manifest: Manifest) -> int:
    from functions import ivf

    return ivf.partitions(manifest.counts.chunks)


def _lance(
    kind: str, root: Path, server: RangeServer, arrays: dict[str, np.ndarray], args: Any
) -> dict[str, Any]:
    """The Lance peer on the same server: the dataset in bucket ``lance`` (built once, with
    Lance's defaults but √n partitions), ``--repeat`` fresh interpreters."""
    from bench import lance_peer

    record = lance_peer.build(root / "vectors.npy", root / "lance", kind)
    runs = lance_peer.lance_cold_runs(
        root,
        server.url,
        "lance",
        kind,
        arrays["queries"],
        arrays["truth"],
        args.repeat,
        server.stats,
        server.reset,
    )
    for run in runs:
        run.pop("cold_by_file", None)
    return {"median": medians(runs), "runs": runs, "build": record}


def _print(name: str, median: dict[str, float]) -> None:
    shown = ", ".join(f"{k} {v:.3g}" for k, v in median.items())
    print(f"{name}: {shown}", flush=True)


def _save(out: Path, report: dict[str, Any]) -> None:
    """Add this size's report to ``out`` (keyed by size), and, for the checked-in figures, to
    results.json and the chart bench/cold_path.png."""
    sizes = json.loads(out.read_text()) if out.exists() else {}
    sizes[f"{report['chunks']}x{report['dim']}"] = report
    out.write_text(json.dumps(sizes, indent=2) + "\n")
    print(f"wrote {out}")
    results = ROOT / "bench" / "results.json"
    if out.parent == results.parent:
        data = json.loads(results.read_text()) if results.exists() else {}
        data["cold_path"] = sizes
        results.write_text(json.dumps(data, indent=2) + "\n")
        _chart(sizes, ROOT / "bench" / "cold_path.png")


def _chart(sizes: dict[str, Any], path: Path) -> None:
    """Spawn to first answer and bytes read before it, per size, ours beside the peers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["knative-rag", "lance ivf_pq", "lance hnsw_sq"]
    keys = {"knative-rag": ("first_200_s", "bytes_before_first_answer")}
    peer = ("to_first_s", "cold_bytes")
    labels = [f"{int(size.split('x')[0]):,} x {size.split('x')[1]}" for size in sizes]
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    width = 0.8 / len(names)
    for n, name in enumerate(names):
        time_key, bytes_key = keys.get(name, peer)
        got = [r["results"].get(name, {}).get("median", {}) for r in sizes.values()]
        at = [i + (n - 1) * width for i in range(len(sizes))]
        axes[0].bar(at, [g.get(time_key, 0) for g in got], width, label=name)
        axes[1].bar(at, [g.get(bytes_key, 0) / 1e6 for g in got], width, label=name)
    for ax, title in zip(
        axes, ("spawn to first answer (s)", "bytes read before it (MB)"), strict=True
    ):
        ax.set_xticks(range(len(sizes)), labels)
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    one = next(iter(sizes.values()))["store"]
    figure.suptitle(
        f"Cold start from S3 ({one['latency_ms']:g} ms a request, "
        f"{one['bandwidth_mbps_per_stream']:g} MB/s a stream): median of runs",
        fontsize=10,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


if __name__ == "__main__":
    main()
