"""What metadata filters cost on an N-chunk artifact: the mask alone, and a filtered search.

    python bench/filters.py [--chunks 100000] [--dim 768] [--repeat 20] [--label after]
    python bench/filters.py --code /tmp/old --label before   # an export of an older commit

Writes a synthetic artifact with the writer of the code it runs (``--code``: the folder whose
``functions`` package to import, by default this checkout), with builder-like metadata: a file
name (5,000 distinct), a language (5), a page number, a float score, a draft flag, two tags (a
list; format 1 does not keep it), and an author on half the chunks. Times ``SearchIndex.mask``
(the filter evaluation) for each filter, median of ``--repeat`` runs, and an exact top-10 search
with and without a filter. Filters the code does not support are reported as such. Prints the
figures and merges them under ``--label`` into bench/filters.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.synthetic_index import write_random_artifact  # noqa: E402


def _filters(condition: Any, group: Any) -> dict[str, Any]:
    c = condition
    return {
        "eq file_name (5k values)": group((c("file_name", "==", "file-1234.md"),)),
        "eq lang": group((c("lang", "==", "de"),)),
        "ne lang": group((c("lang", "!=", "de"),)),
        "gt page": group((c("page", ">", 250),)),
        "in lang": group((c("lang", "in", ["de", "fr"]),)),
        "nin lang": group((c("lang", "nin", ["de", "fr"]),)),
        "eq draft (bool)": group((c("draft", "==", True),)),
        "ne author (missing on half)": group((c("author", "!=", "ann"),)),
        "and(eq lang, gt page, or(...))": group(
            (
                c("lang", "==", "en"),
                c("page", ">", 100),
                group((c("score", "<", 2.0), c("draft", "==", False)), "or"),
            )
        ),
        "contains tags": group((c("tags", "contains", "t3"),)),
        "any tags": group((c("tags", "any", ["t1", "t2"]),)),
        "is_empty author": group((c("author", "is_empty", None),)),
        "text_match file_name": group((c("file_name", "text_match", "-12"),)),
        "not(eq lang)": group((c("lang", "==", "de"),), "not"),
        "eq doc_id (first use: ids read)": group((c("doc_id", "==", "doc-77"),)),
        "eq doc_id": group((c("doc_id", "==", "doc-77"),)),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--label", default="after")
    parser.add_argument("--code", type=Path, default=ROOT)
    args = parser.parse_args()
    sys.path.insert(0, str(args.code))
    from functions import artifact as formats
    from functions import search
    from functions.errors import RagError
    from functions.search import SearchIndex

    if hasattr(search, "Condition"):  # before the filters module (the editable install would
        Condition, FilterGroup = search.Condition, search.FilterGroup  # find this checkout's)
    else:
        from functions.filters import Condition, FilterGroup

    n, dim = args.chunks, args.dim
    rng = np.random.default_rng(0)
    langs = ["en", "de", "fr", "es", "it"]
    records = [
        formats.NodeRecord(
            f"doc-{i // 20}#{i % 20}",
            f"doc-{i // 20}",
            f"chunk {i}",
            {
                "file_name": f"file-{i // 20}.md",
                "lang": langs[i % 5],
                "page": i % 500,
                "score": (i % 97) / 10,
                "draft": i % 7 == 0,
                "tags": [f"t{i % 10}", f"t{(i // 10) % 10}"],
                **({"author": ["ann", "bob", "cy"][i % 3]} if i % 2 else {}),
            },
        )
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="bench-filters-") as tmp:
        artifact = write_random_artifact(formats, Path(tmp), records, dim, rng)
        del records
        index = SearchIndex(artifact)
        masks: dict[str, Any] = {}
        for name, where in _filters(Condition, FilterGroup).items():
            once = "first use" in name
            try:
                times = []
                for _ in range(1 if once else args.repeat):
                    started = time.perf_counter()
                    admitted = int(index.mask(where).sum())
                    times.append(time.perf_counter() - started)
                masks[name] = {"ms": round(statistics.median(times) * 1000, 3), "rows": admitted}
            except RagError as exc:
                masks[name] = {"refused": f"{type(exc).__name__}: {exc}"[:160]}
        query = rng.standard_normal(dim).astype(np.float32)
        where = FilterGroup((Condition("lang", "==", "de"),))
        searches = {}
        for name, filters in {"top-10, no filter": None, "top-10, eq lang": where}.items():
            index.search(query, 10, filters)  # warm
            times = []
            for _ in range(args.repeat):
                started = time.perf_counter()
                index.search(query, 10, filters)
                times.append(time.perf_counter() - started)
            searches[name] = round(statistics.median(times) * 1000, 3)
        index.close()
    results = {
        "format_version": artifact.manifest.format_version,
        "chunks": n,
        "dim": dim,
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "mask_median": masks,
        "search_median_ms": searches,
    }
    print(f"{args.label}: format {artifact.manifest.format_version}, {n} chunks x {dim}")
    for name, figure in masks.items():
        shown = f"{figure['ms']:9.3f} ms  {figure['rows']:6d} rows" if "ms" in figure else figure
        print(f"  mask   {name:34s} {shown}")
    for name, ms in searches.items():
        print(f"  search {name:34s} {ms:9.3f} ms")
    out = ROOT / "bench" / "filters.json"
    saved = json.loads(out.read_text()) if out.exists() else {}
    saved[args.label] = results
    out.write_text(json.dumps(saved, indent=2) + "\n")
    print(f"saved {out.relative_to(ROOT)} [{args.label}]")


if __name__ == "__main__":
    main()
