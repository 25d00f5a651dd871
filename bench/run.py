"""``make bench``: cold start, query speed and memory of knative-rag against LlamaIndex's default.

    python bench/run.py [--sizes 1000,10000,100000,300000] [--repeat 3] [--dim 768]
                        [--work bench/.work/run] [--out bench/results.json] [--no-chart]

Everything runs on this machine over loopback: moto's S3 server (in its own process) holds the
indexes, the Ollama double (its own process) embeds instantly and answers chat instantly, and
every cold start spawns ``python -m functions``, the container's command. Indexes up to 10k
chunks are built by the real builder CLI; larger ones by the builder's own artifact writer and
publisher from the same corpus and the double's vectors (the CLI's sentence splitting alone
would take minutes). On moto a function downloads its index before it answers (moto reads a
whole object for every ranged GET: answering on demand is bench/cold_path.py's). Writes
bench/results.json and bench/results.png (``--out`` and the .png beside it); ``--work`` is
emptied first.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import corpus as synthetic  # noqa: E402
from bench.load import query_load, read_files_s  # noqa: E402
from bench.services import cold_start, moto_server, ollama_double, use_bucket  # noqa: E402
from functions.catalog import read_manifest  # noqa: E402
from functions.storage import open_store  # noqa: E402

WORK = ROOT / "bench" / ".work" / "run"
BUCKET = "bench-knative-rag"
_BACKEND_COLORS = {"artifact": "C0", "elasticsearch": "black"}  # C0: the retrieve-mode line


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    python = platform.python_version()
    return f"{os.cpu_count()} x {cpu}, {mem:.0f} GiB RAM, Python {python}, {platform.system()}"


def build(
    size: int, corpus: list[str], store_uri: str, env: dict[str, str], dim: int, work: Path
) -> dict[str, Any]:
    started = time.perf_counter()
    if size <= 10_000:
        source = synthetic.write_files(work / f"docs-{size}", corpus)
        command = [
            sys.executable,
            "-m",
            "index_builder",
            "--store",
            store_uri,
            "build",
            "--source",
            str(source),
            "--channel",
            "stable",
            "--create-channel",
        ]
        done = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, check=True
        )
        index_id, how = done.stdout.strip(), "index_builder CLI"
    else:
        index_id = synthetic.publish_synthetic(
            open_store(store_uri), corpus, dim, work / f"artifact-{size}"
        )
        how = "builder's writer + publisher"
    manifest = read_manifest(open_store(store_uri), "stable")
    return {
        "index_id": index_id,
        "built_by": how,
        "build_s": time.perf_counter() - started,
        "chunks": manifest.counts.chunks,
        "artifact_bytes": sum(f.size for f in manifest.files.values()),
        "vector_bytes": manifest.files["vectors.f32"].size,
    }


def baseline(
    size: int,
    corpus: list[str],
    store_uri: str,
    env: dict[str, str],
    ollama: str,
    dim: int,
    query: str,
    work: Path,
) -> dict[str, Any]:
    """LlamaIndex's default: persist a VectorStoreIndex, upload it; a fresh process loads it."""
    import boto3
    from llama_index.core import VectorStoreIndex
    from llama_index.core.schema import TextNode
    from llama_index.embeddings.ollama import OllamaEmbedding

    from functions.embeddings import normalize

    nodes = [
        TextNode(
            id_=f"doc-{i:06d}.txt#0",
            text=text,
            embedding=[float(x) for x in normalize(synthetic.vector(text, dim))],
        )
        for i, text in enumerate(corpus)
    ]
    index = VectorStoreIndex(
        nodes, embed_model=OllamaEmbedding(model_name="nomic-embed-text", base_url=ollama)
    )
    persist_dir = work / f"persist-{size}"
    started = time.perf_counter()
    index.storage_context.persist(persist_dir=str(persist_dir))
    persist_s = time.perf_counter() - started
    client = boto3.client("s3")
    prefix = f"baseline-{size}/"
    for path in persist_dir.iterdir():
        client.upload_file(str(path), BUCKET, prefix + path.name)
    spawned_at = time.time()
    done = subprocess.run(
        [sys.executable, "bench/baseline.py", "persisted", BUCKET, prefix, ollama, query],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout)
    result["persist_s"] = persist_s
    result["persisted_bytes"] = sum(p.stat().st_size for p in persist_dir.iterdir())
    result["interpreter_s"] = result["started_at"] - spawned_at
    result["total_s"] = result["first_result_at"] - spawned_at
    spawned_at = time.time()
    done = subprocess.run(
        [sys.executable, "bench/baseline.py", "seed", str(work / f"docs-{size}"), ollama, query],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    seed = json.loads(done.stdout)
    seed["total_s"] = seed["first_result_at"] - spawned_at
    return {"persisted": result, "seed": seed}


def median_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [k for k, v in runs[0].items() if isinstance(v, float)]
    return {k: statistics.median(run[k] for run in runs) for k in keys}


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(s) for s in results["sizes"])
    entries = [results["sizes"][str(s)] for s in sizes]
    backends = results.get("backends")  # bench/backends.py: one size, both backends
    if backends:
        fig, (ax, side) = plt.subplots(
            1, 2, figsize=(11, 4.8), dpi=120, gridspec_kw={"width_ratios": [2.3, 1]}
        )
    else:
        fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    for mode, style in (("retrieve", "o-"), ("answer", "s-")):
        ax.plot(
            sizes,
            [e["cold_start"][mode]["median"]["total_s"] for e in entries],
            style,
            label=f"knative-rag, {mode} mode",
        )
    ax.plot(
        sizes,
        [e["load_s"] for e in entries],
        "^:",
        label="knative-rag, load only (download+verify+map)",
    )
    base = [(s, e["baseline"]) for s, e in zip(sizes, entries, strict=True) if "baseline" in e]
    if base:
        ax.plot(
            [s for s, _ in base],
            [b["persisted"]["total_s"] for _, b in base],
            "x--",
            label="LlamaIndex persist + load_index_from_storage",
        )
        ax.plot(
            [s for s, _ in base],
            [b["seed"]["total_s"] for _, b in base],
            "d--",
            label="LlamaIndex rebuild from documents at start",
        )
    if backends:
        for name, style in (("artifact", "o"), ("elasticsearch", "P")):
            ax.plot(
                [backends["size"]],
                [backends[name]["cold_start"]["retrieve"]["median"]["total_s"]],
                style,
                color=_BACKEND_COLORS[name],
                markersize=9,
                markerfacecolor="none",
                label=f"{name} backend, retrieve mode (bench/backends.py)",
            )
        _backends_panel(side, backends)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"chunks ({results['dim']}-d vectors)")
    ax.set_ylabel("process start → first answer (s)")
    ax.set_title("Cold start vs index size", fontsize=11)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, results["machine"][:110], fontsize=6, alpha=0.7)
    fig.tight_layout()
    fig.savefig(path)


def _backends_panel(ax: Any, backends: dict[str, Any]) -> None:
    """Retrieve latency by concurrency, artifact against Elasticsearch, at one index size."""
    levels = sorted(int(key[1:]) for key in backends["artifact"]["query_load"] if key[1:].isdigit())
    for offset, name in ((-0.2, "artifact"), (0.2, "elasticsearch")):
        load = backends[name]["query_load"]
        ax.bar(
            [i + offset for i in range(len(levels))],
            [load[f"c{c}"]["p50_ms"] for c in levels],
            width=0.4,
            color=_BACKEND_COLORS[name],
            label=f"{name} backend",
        )
    ax.set_xticks(range(len(levels)), [f"c={c}" for c in levels])
    ax.set_yscale("log")
    ax.set_ylabel("retrieve p50 over HTTP (ms)")
    ax.set_title(f"Warm, {backends['size'] // 1000}k chunks", fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000,300000")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--baseline-sizes", default="1000,10000")
    parser.add_argument(
        "--load-size", type=int, default=100_000, help="index size for the query load test"
    )
    parser.add_argument("--work", type=Path, default=WORK, help="emptied, then used")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument(
        "--no-chart", action="store_true", help="no results.png (matplotlib: the bench extra)"
    )
    args = parser.parse_args()
    work: Path = args.work
    sizes = [int(s) for s in args.sizes.split(",")]
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    began = time.perf_counter()
    results: dict[str, Any] = {
        "machine": machine(),
        "store": "moto's S3 server over loopback HTTP (not S3: no network, ~1 GB/s per GET)",
        "llm_and_embeddings": "Ollama double over loopback HTTP, instant answers",
        "download": "RAG_DOWNLOAD_CONCURRENCY=1: one streaming GET per file, 4 files at once",
        "dim": args.dim,
        "sizes": {},
    }
    with moto_server(work) as s3, ollama_double(work, args.dim) as ollama:
        aws = use_bucket(s3, BUCKET)
        env = {
            **os.environ,
            **aws,
            "OLLAMA_HOST": ollama,
            "RAG_INDEX": "stable",
            "RAG_LLM_PROVIDER": "ollama",
            "RAG_LOG_LEVEL": "WARNING",
            # moto re-reads the whole object for every ranged GET, so parallel ranges are far
            # slower there than one stream; on S3 it is the opposite (see README).
            "RAG_DOWNLOAD_CONCURRENCY": "1",
        }
        corpus = synthetic.texts(max(sizes))
        query = corpus[min(123, len(corpus) - 1)]
        for size in sizes:
            store_uri = f"s3://{BUCKET}/n{size}"
            print(f"{size} chunks: building ...", flush=True)
            entry = build(size, corpus[:size], store_uri, env, args.dim, work)
            function_env = {**env, "RAG_STORE_URI": store_uri}
            entry["cold_start"] = {}
            for mode in ("retrieve", "answer"):
                runs = [cold_start(function_env, mode, query, work) for _ in range(args.repeat)]
                entry["cold_start"][mode] = {"median": median_runs(runs), "runs": runs}
            median = entry["cold_start"]["retrieve"]["median"]
            entry["load_s"] = median["download_and_verify_s"] + median["map_s"]
            entry["read_files_s"] = read_files_s(store_uri, entry["index_id"])
            print(
                f"  built in {entry['build_s']:.1f} s by the {entry['built_by']}; cold start "
                f"retrieve {median['total_s']:.3f} s, "
                f"answer {entry['cold_start']['answer']['median']['total_s']:.3f} s; "
                f"load {entry['load_s']:.3f} s vs reading the files {entry['read_files_s']:.3f} s; "
                f"peak RSS {median['peak_rss_mb']:.0f} MB "
                f"(vectors {entry['vector_bytes'] / 2**20:.0f} MiB)",
                flush=True,
            )
            if size in baseline_sizes:
                print(f"  LlamaIndex baseline at {size} ...", flush=True)
                entry["baseline"] = baseline(
                    size, corpus[:size], store_uri, env, ollama, args.dim, query, work
                )
                ours = median["total_s"]
                entry["baseline"]["ratio_persisted_to_ours"] = (
                    entry["baseline"]["persisted"]["total_s"] / ours
                )
                entry["baseline"]["ratio_seed_to_ours"] = (
                    entry["baseline"]["seed"]["total_s"] / ours
                )
                print(
                    f"  baseline persisted {entry['baseline']['persisted']['total_s']:.1f} s "
                    f"({entry['baseline']['ratio_persisted_to_ours']:.0f}x ours), seed "
                    f"{entry['baseline']['seed']['total_s']:.1f} s "
                    f"({entry['baseline']['ratio_seed_to_ours']:.0f}x); "
                    f"SimpleVectorStore query p50 "
                    f"{entry['baseline']['persisted']['query_p50_s'] * 1000:.0f} ms",
                    flush=True,
                )
            if size == args.load_size:
                print(f"  query load at {size} ...", flush=True)
                entry["query_load"] = query_load(
                    function_env, corpus[:2000], [(1, 300), (8, 1200), (32, 1600)]
                )
            results["sizes"][str(size)] = entry
    results["bench_wall_s"] = time.perf_counter() - began
    saved: Path = args.out
    if saved.exists():  # bench/backends.py's and bench/cold_path.py's entries: their own runs'
        kept = json.loads(saved.read_text())
        for entry in ("backends", "cold_path"):
            if kept.get(entry) is not None:
                results[entry] = kept[entry]
    saved.write_text(json.dumps(results, indent=2) + "\n")
    if not args.no_chart:
        chart(results, saved.with_suffix(".png"))
    print(f"wrote {saved} in {results['bench_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
