"""The Lance peer: cold first query and warm queries of a Lance dataset read from S3 by ranges.

    python bench/lance_peer.py [--chunks 100000] [--dim 768] [--queries 200] [--repeat 5]
        [--latency-ms 20] [--bandwidth-mbps 100] [--nprobes N] [--refine-factor 0] [--no-sweep]

Vectors and queries come from bench/clustered.py (its recipe is in the output), cached as .npy
under bench/.work/clustered-<n>x<dim>/ with their exact top-10. Two Lance datasets are built
there once (a ``row`` int64 column and a ``vector`` fixed-size-list float32 column, written to the
folder directly): IVF_PQ with ``round(sqrt(n))`` partitions and ``dim / 16`` sub-vectors, and
IVF_HNSW_SQ with the same partitions and the library's other defaults, both cosine. Lance caps
IVF_PQ's partitions at ``n / 256``; the record keeps the count the index really has.

A RangeS3 server (bench/range_s3.py, its own process) serves that folder with the given latency
per request and bandwidth per stream. Each repeat is a new interpreter (``_CHILD``): the time to
the first top-10 counts from the parent's spawn (``time.time()`` before ``Popen``; the child's
interpreter start, ``import lance``, opening the dataset and the query are also reported apart),
and the GETs and bytes of the cold start are the server's counters, zeroed before the spawn and
read while the child waits on its stdin. The same child then runs the other queries warm (one at
a time, p50/p95, GETs and bytes per query) and, in the first repeat, a sweep of ``nprobes`` and
``refine_factor`` for recall. Prints a table; writes bench/lance_peer.json (one entry per size).

``build`` and ``lance_cold_runs`` are the pieces bench/cold_path.py reuses to put Lance beside the
artifact in one run. The module is over 400 lines, one script rather than a package, so that it
runs by path like the other benchmarks and carries its child's source with it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lance
import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.clustered import __doc__ as RECIPE  # noqa: E402
from bench.clustered import cached, recall  # noqa: E402
from bench.run import machine  # noqa: E402

__all__ = ["KINDS", "build", "lance_cold_runs", "main", "storage_options"]

KINDS = {"ivf_pq": "IVF_PQ", "hnsw_sq": "IVF_HNSW_SQ"}
BUCKET = "lance"
K = 10
_IVF_SWEEP = [
    {"nprobes": p, **({"refine_factor": r} if r else {})}
    for p in (10, 20, 50, 100)
    for r in (0, 10)
]
DEFAULT_SWEEP: dict[str, list[dict[str, int]]] = {
    "ivf_pq": [
        *_IVF_SWEEP,
        {"nprobes": 20, "refine_factor": 50},
        {"nprobes": 20, "refine_factor": 200},
    ],
    "hnsw_sq": [*_IVF_SWEEP, {"nprobes": 20, "ef": 50}, {"nprobes": 20, "ef": 200}],
}
_BATCH_ROWS = 65_536

# One cold start, then warm queries. Argument: a JSON object (uri, storage_options, queries
# path, nearest parameters, sweep). Prints one JSON line per phase and waits for a line on stdin
# after the cold and the warm phase, while the parent reads the server's counters.
_CHILD = """
import time
t_start = time.time()
import json, sys
import lance
t_imported = time.time()
a = json.loads(sys.argv[1])
ds = lance.dataset(a["uri"], storage_options=a["storage_options"])
t_opened = time.time()

def top(q, params):
    table = ds.to_table(
        nearest={"column": "vector", "q": q, "k": a["k"], **params},
        columns=["row"],
        disable_scoring_autoprojection=True,
    )
    return table.column("row").to_pylist()

import numpy as np
queries = np.load(a["queries"])
t_loaded = time.time()
first = top(queries[0], a["params"])
t_first = time.time()
print(json.dumps({
    "t_start": t_start, "t_first": t_first, "import_s": t_imported - t_start,
    "open_s": t_opened - t_imported, "first_query_s": t_first - t_loaded, "found": [first],
}), flush=True)
sys.stdin.readline()
found, seconds = [], []
for q in queries[1:]:
    t = time.perf_counter()
    found.append(top(q, a["params"]))
    seconds.append(time.perf_counter() - t)
print(json.dumps({"found": found, "seconds": seconds}), flush=True)
sys.stdin.readline()
sweep = []
for params in a["sweep"]:
    t = time.perf_counter()
    sweep.append({"params": params, "found": [top(q, params) for q in queries]})
    sweep[-1]["seconds"] = time.perf_counter() - t
print(json.dumps({"sweep": sweep}), flush=True)
"""


def storage_options(s3_url: str) -> dict[str, str]:
    """Lance's (object_store's) options for a path-style, plain-HTTP S3 endpoint at ``s3_url``."""
    return {
        "endpoint": s3_url,
        "allow_http": "true",
        "virtual_hosted_style_request": "false",
        "region": "us-east-1",
        "aws_access_key_id": "bench",
        "aws_secret_access_key": "bench",
    }


def _batches(vectors: np.ndarray) -> Iterator[pa.RecordBatch]:
    for start in range(0, len(vectors), _BATCH_ROWS):
        block = np.ascontiguousarray(vectors[start : start + _BATCH_ROWS], dtype=np.float32)
        rows = pa.array(np.arange(start, start + len(block), dtype=np.int64))
        column = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
        yield pa.RecordBatch.from_arrays([rows, column], names=["row", "vector"])


def _index_summary(dataset: Any) -> dict[str, Any]:
    os.environ.setdefault("LANCE_INCLUDE_VECTOR_CENTROIDS", "false")  # not needed, and large
    stats = dataset.stats.index_stats("vector_idx")["indices"][0]
    sizes = [p["size"] for p in stats["partitions"]]
    sub = {k: v for k, v in stats["sub_index"].items() if not isinstance(v, list | dict)}
    sub.update(stats["sub_index"].get("params", {}))
    return {
        "index_type": stats["index_type"],
        "metric": stats["metric_type"],
        "num_partitions": stats["num_partitions"],
        "partition_rows": {
            "min": min(sizes),
            "median": statistics.median(sizes),
            "max": max(sizes),
        },
        "sub_index": sub,
    }


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def build(vectors_npy: Path, out_dir: Path, kind: str) -> dict[str, Any]:
    """Write ``out_dir/<kind>.lance`` from an (n, dim) float32 .npy and index it (once: a
    finished build leaves ``<kind>.build.json`` beside it); its build record."""
    record_path = out_dir / f"{kind}.build.json"
    uri = out_dir / f"{kind}.lance"
    if record_path.exists() and uri.exists():
        return dict(json.loads(record_path.read_text()), cached=True)
    shutil.rmtree(uri, ignore_errors=True)
    vectors = np.load(vectors_npy, mmap_mode="r")
    n, dim = vectors.shape
    params: dict[str, Any] = {"num_partitions": round(math.sqrt(n)), "metric": "cosine"}
    if kind == "ivf_pq":
        params["num_sub_vectors"] = dim // 16
    schema = pa.schema([("row", pa.int64()), ("vector", pa.list_(pa.float32(), dim))])
    started = time.perf_counter()
    reader = pa.RecordBatchReader.from_batches(schema, _batches(vectors))
    dataset = lance.write_dataset(reader, str(uri))
    written = time.perf_counter()
    dataset.create_index("vector", KINDS[kind], **params)
    indexed = time.perf_counter()
    record = {
        "kind": kind,
        "rows": n,
        "dim": dim,
        "asked": params,
        "index": _index_summary(lance.dataset(str(uri))),
        "write_s": written - started,
        "index_s": indexed - written,
        "bytes": _folder_bytes(uri),
        "data_bytes": _folder_bytes(uri / "data"),
        "index_bytes": _folder_bytes(uri / "_indices"),
        "lance": lance.__version__,
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return dict(record, cached=False)


def _file_kind(key: str) -> str:
    """``bucket/<kind>.lance/data/x.lance`` -> ``data``; index files by their own name."""
    parts = key.split("/")
    if "_indices" in parts:
        return parts[-1]  # index.idx, auxiliary.idx
    return parts[2] if len(parts) > 3 else parts[-1]


def _by_file(stats: dict[str, Any]) -> dict[str, dict[str, int]]:
    grouped: dict[str, dict[str, int]] = {}
    for key, totals in stats["by_key"].items():
        group = grouped.setdefault(_file_kind(key), {"gets": 0, "bytes": 0})
        group["gets"] += totals["gets"]
        group["bytes"] += totals["bytes"]
    return grouped


def _pick(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _one_run(
    argument: dict[str, Any],
    truth: np.ndarray,
    stats: Callable[[], dict[str, Any]],
    reset: Callable[[], None],
) -> dict[str, Any]:
    with tempfile.TemporaryFile("w+") as errors:
        reset()
        spawned = time.time()
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, json.dumps(argument)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            phases = []
            for _ in range(3):
                line = child.stdout.readline()
                if not line:
                    break
                phases.append((json.loads(line), stats()))
                with contextlib.suppress(BrokenPipeError):  # it died: its exit code says so
                    child.stdin.write("\n")
                    child.stdin.flush()
        finally:
            with contextlib.suppress(BrokenPipeError):
                child.stdin.close()
            code = child.wait(timeout=600)
        if code != 0 or len(phases) != 3:
            errors.seek(0)
            raise RuntimeError(f"the Lance child failed ({code}):\n{errors.read()[-4000:]}")
    (cold, at_cold), (warm, at_warm), (sweep, _) = phases
    queries = len(warm["seconds"])
    warm_ms = [s * 1000 for s in warm["seconds"]]
    run: dict[str, Any] = {
        "to_first_s": cold["t_first"] - spawned,
        "interpreter_s": cold["t_start"] - spawned,
        "import_s": cold["import_s"],
        "open_s": cold["open_s"],
        "first_query_s": cold["first_query_s"],
        "cold_gets": at_cold["gets"],
        "cold_bytes": at_cold["bytes"],
        "cold_by_file": _by_file(at_cold),
        "warm_p50_ms": _pick(warm_ms, 0.50),
        "warm_p95_ms": _pick(warm_ms, 0.95),
        "warm_gets_per_query": (at_warm["gets"] - at_cold["gets"]) / queries,
        "warm_bytes_per_query": (at_warm["bytes"] - at_cold["bytes"]) / queries,
        "recall_first": recall(cold["found"], truth[:1]),
        "recall_all": recall(cold["found"] + warm["found"], truth),
    }
    if sweep["sweep"]:
        run["sweep"] = [
            {
                **s["params"],
                "recall": recall(s["found"], truth),
                "mean_ms": s["seconds"] * 1000 / len(truth),
            }
            for s in sweep["sweep"]
        ]
    return run


def lance_cold_runs(
    work: Path,
    s3_url: str,
    bucket: str,
    kind: str,
    queries: np.ndarray,
    truth: np.ndarray,
    repeat: int,
    stats: Callable[[], dict[str, Any]],
    reset: Callable[[], None],
    *,
    sweep: list[dict[str, int]] | None = None,
    **params: int,
) -> list[dict[str, Any]]:
    """``repeat`` fresh-interpreter runs of ``s3://<bucket>/<kind>.lance`` (the S3 server at
    ``s3_url`` serves ``work``, so the dataset is ``work/<bucket>/<kind>.lance``): the first of
    ``queries`` cold, the others warm, recall against ``truth`` (exact top-k ids, k = its width).

    ``stats`` and ``reset`` read and zero the server's counters (``RangeS3.stats``/``reset``, or
    its /_bench endpoints); ``params`` go into Lance's ``nearest`` (``nprobes``,
    ``refine_factor``, ``ef``...); ``sweep`` (first run only) is a list of such parameter sets,
    each run over all queries warm for its recall. Each run's dict: ``to_first_s`` (spawn to the
    first top-k in hand), ``interpreter_s``, ``import_s``, ``open_s``, ``first_query_s``,
    ``cold_gets``, ``cold_bytes``, ``cold_by_file``, ``warm_p50_ms``, ``warm_p95_ms``,
    ``warm_gets_per_query``, ``warm_bytes_per_query``, ``recall_first``, ``recall_all`` and, with
    a sweep, ``sweep`` (recall and mean ms per parameter set)."""
    if not (work / bucket / f"{kind}.lance").is_dir():
        raise FileNotFoundError(work / bucket / f"{kind}.lance")
    with tempfile.TemporaryDirectory() as folder:
        np.save(Path(folder) / "queries.npy", np.ascontiguousarray(queries, dtype=np.float32))
        argument = {
            "uri": f"s3://{bucket}/{kind}.lance",
            "storage_options": storage_options(s3_url),
            "queries": str(Path(folder) / "queries.npy"),
            "k": truth.shape[1],
            "params": {key: value for key, value in params.items() if value is not None},
        }
        return [
            _one_run({**argument, "sweep": (sweep or []) if i == 0 else []}, truth, stats, reset)
            for i in range(repeat)
        ]


def _data(n: int, dim: int, count: int) -> tuple[Path, np.ndarray, np.ndarray]:
    """The work folder with vectors.npy, and the queries and their exact top-k (cached)."""
    work = ROOT / "bench" / ".work" / f"clustered-{n}x{dim}"
    _, queries, truth = cached(work, n, dim, count, K)
    return work, queries, truth


def _range_s3(work: Path, latency_ms: float, bandwidth_mbps: float) -> tuple[Any, str]:
    server = subprocess.Popen(
        [
            *(sys.executable, str(ROOT / "bench" / "range_s3.py"), "--root", str(work)),
            *("--latency-ms", str(latency_ms), "--bandwidth-mbps", str(bandwidth_mbps)),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    return server, server.stdout.readline().strip()


def _control(url: str, method: str, name: str) -> dict[str, Any]:
    # The server this script started, on loopback: an http URL by construction.
    request = urllib.request.Request(f"{url}/_bench/{name}", method=method)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return dict(json.load(response))


def _median(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k, v in runs[0].items() if isinstance(v, int | float)]
    return {k: statistics.median(run[k] for run in runs) for k in keys}


def _table(kinds: dict[str, Any]) -> str:
    rows = [
        ("to first top-10 (spawn)", "to_first_s", 1000, "ms"),
        ("  interpreter start", "interpreter_s", 1000, "ms"),
        ("  import lance", "import_s", 1000, "ms"),
        ("  open dataset", "open_s", 1000, "ms"),
        ("  first query", "first_query_s", 1000, "ms"),
        ("cold GETs", "cold_gets", 1, ""),
        ("cold bytes", "cold_bytes", 1e-6, "MB"),
        ("warm p50", "warm_p50_ms", 1, "ms"),
        ("warm p95", "warm_p95_ms", 1, "ms"),
        ("warm GETs / query", "warm_gets_per_query", 1, ""),
        ("warm bytes / query", "warm_bytes_per_query", 1e-3, "kB"),
        ("recall@10 first query", "recall_first", 1, ""),
        ("recall@10 all queries", "recall_all", 1, ""),
    ]
    lines = [f"{'median of runs':28}" + "".join(f"{kind:>14}" for kind in kinds)]
    for label, key, scale, unit in rows:
        cells = "".join(f"{kinds[kind]['median'][key] * scale:>11.2f} {unit:2}" for kind in kinds)
        lines.append(f"{label:28}{cells}")
    for kind, result in kinds.items():
        build = result["build"]
        lines.append(
            f"{kind}: {build['index']['num_partitions']} partitions, built in "
            f"{build['write_s'] + build['index_s']:.1f} s, {build['bytes'] / 1e6:.0f} MB on disk "
            f"(index {build['index_bytes'] / 1e6:.1f} MB)"
        )
        for s in result["runs"][0].get("sweep", []):
            knobs = ", ".join(f"{k} {v}" for k, v in s.items() if k not in ("recall", "mean_ms"))
            lines.append(
                f"  {knobs:32} recall@10 {s['recall']:.3f}, {s['mean_ms']:7.1f} ms/query warm"
            )
    return "\n".join(lines)


def main() -> None:
    """The CLI: build (cached), serve, measure both kinds, print and save."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=100.0, help="MB/s per stream")
    parser.add_argument("--nprobes", type=int, default=None, help="default: Lance's")
    parser.add_argument("--refine-factor", type=int, default=0, help="0: no refine")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--no-sweep", action="store_true")
    args = parser.parse_args()
    work, queries, truth = _data(args.chunks, args.dim, args.queries)
    kinds: dict[str, Any] = {}
    for kind in args.kinds.split(","):
        print(f"building {kind} ...", flush=True)
        kinds[kind] = {"build": build(work / "vectors.npy", work / BUCKET, kind)}
    server, url = _range_s3(work, args.latency_ms, args.bandwidth_mbps)

    def stats() -> dict[str, Any]:
        return _control(url, "GET", "stats")

    def reset() -> None:
        _control(url, "POST", "reset")

    try:
        params = {"nprobes": args.nprobes, "refine_factor": args.refine_factor or None}
        for kind, result in kinds.items():
            print(f"measuring {kind} ({args.repeat} cold runs) ...", flush=True)
            result["runs"] = lance_cold_runs(
                work,
                url,
                BUCKET,
                kind,
                queries,
                truth,
                args.repeat,
                stats,
                reset,
                sweep=None if args.no_sweep else DEFAULT_SWEEP[kind],
                **params,
            )
            result["median"] = _median(result["runs"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    record = {
        "rows": args.chunks,
        "dim": args.dim,
        "queries": args.queries,
        "k": K,
        "repeat": args.repeat,
        "params": {k: v for k, v in params.items() if v is not None} or "Lance defaults",
        "store": f"bench/range_s3.py: {args.latency_ms:g} ms per request, "
        f"{args.bandwidth_mbps:g} MB/s per stream, loopback",
        "machine": machine(),
        "lance": lance.__version__,
        "vectors": " ".join(" ".join((RECIPE or "").split("\n\n")[1:4]).split()),
        "kinds": kinds,
    }
    print(_table(kinds))
    path = ROOT / "bench" / "lance_peer.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    saved[f"{args.chunks}x{args.dim}"] = record
    path.write_text(json.dumps(saved, indent=2) + "\n")


if __name__ == "__main__":
    main()
