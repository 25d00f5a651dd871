"""What a filtered exact search costs on an N-chunk artifact, by the share of rows it admits.

    python bench/filtered_search.py [--chunks 100000] [--dim 768] [--repeat 25] [--label after]
    python bench/filtered_search.py --code /tmp/old --label before   # an export of an older commit

Writes a synthetic artifact with the writer of the code it runs (``--code``: the folder whose
``functions`` package to import, by default this checkout), whose chunks carry a ``page``
(0..99) and a ``lang`` (5 values). For no filter, and filters admitting every row, half, 30, 20,
10, 5 and 1 % of them, it times one top-10 search at a time (median of ``--repeat``) and
measures the memory allocated at the peak of one search (tracemalloc, numpy included). Then 16
searches at once, 8 filtered (every row admitted) and 8 not: the wall time for all of them,
which shows whether the filtered ones share the unfiltered ones' matrix product. Prints the
figures and merges them under ``--label`` into bench/filtered_search.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic_index import write_random_artifact  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=25)
    parser.add_argument("--label", default="after")
    parser.add_argument("--code", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    from functions import artifact as formats
    from functions.filters import Condition, FilterGroup
    from functions.search import SearchIndex

    n, dim = args.chunks, args.dim
    rng = np.random.default_rng(0)
    langs = ["en", "de", "fr", "es", "it"]
    records = [
        formats.NodeRecord(
            f"doc-{i // 20}#{i % 20}",
            f"doc-{i // 20}",
            f"chunk {i}",
            {"page": i % 100, "lang": langs[i % 5]},
        )
        for i in range(n)
    ]
    filters: dict[str, Any] = {
        "no filter": None,
        "every row (lang != xx)": FilterGroup((Condition("lang", "!=", "xx"),)),
        "half (page < 50)": FilterGroup((Condition("page", "<", 50),)),
        "30 % (page < 30)": FilterGroup((Condition("page", "<", 30),)),
        "20 % (lang == de)": FilterGroup((Condition("lang", "==", "de"),)),
        "10 % (page < 10)": FilterGroup((Condition("page", "<", 10),)),
        "5 % (page < 5)": FilterGroup((Condition("page", "<", 5),)),
        "1 % (page == 7)": FilterGroup((Condition("page", "==", 7),)),
    }
    with tempfile.TemporaryDirectory(prefix="bench-filtered-") as tmp:
        artifact = write_random_artifact(formats, Path(tmp), records, dim, rng)
        del records
        index = SearchIndex(artifact)
        queries = rng.standard_normal((args.repeat, dim)).astype(np.float32)
        single: dict[str, dict[str, float]] = {}
        for name, where in filters.items():
            index.search(queries[0], 10, where)  # warm: the mapping, the filter's columns
            times = []
            for query in queries:
                started = time.perf_counter()
                index.search(query, 10, where)
                times.append(time.perf_counter() - started)
            tracemalloc.start()
            index.search(queries[0], 10, where)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            single[name] = {
                "ms": round(statistics.median(times) * 1000, 2),
                "peak_mb": round(peak / 2**20, 1),
            }
        where = filters["every row (lang != xx)"]
        mixed = [(queries[i % len(queries)], where if i % 2 else None) for i in range(16)]
        walls = []
        with ThreadPoolExecutor(16) as pool:
            for _ in range(5):
                started = time.perf_counter()
                list(pool.map(lambda job: index.search(job[0], 10, job[1]), mixed))
                walls.append(time.perf_counter() - started)
        index.close()
    results = {
        "chunks": n,
        "dim": dim,
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "one_search": single,
        "16_at_once_8_filtered_ms": round(statistics.median(walls) * 1000, 1),
    }
    print(f"{args.label}: {n} chunks x {dim}, top 10")
    for name, figure in single.items():
        print(f"  {name:26s} {figure['ms']:8.2f} ms  peak {figure['peak_mb']:7.1f} MB")
    print(f"  16 at once, 8 filtered      {results['16_at_once_8_filtered_ms']:8.1f} ms")
    out = ROOT / "bench" / "filtered_search.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved[args.label] = results
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)} [{args.label}]")


if __name__ == "__main__":
    main()
