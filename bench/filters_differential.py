"""The artifact store against LlamaIndex's SimpleVectorStore on many generated filter queries.

    python bench/filters_differential.py [--cases 10000] [--seed 0]

The cases are those of ``tests/test_filters.py`` (``tests/filter_cases.py``): random nodes with
mixed metadata and tying vectors, written by the real artifact writer, and random filter trees
over every operator and condition, top k, node and document ids. Each query's two answers are
compared; the script counts agreements and every kind of disagreement, prints them, and saves
them with a few disagreeing examples to bench/filters_differential.json. Unlike the test, it does
not stop at the first disagreement.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from llama_index.core import __version__ as llama_index_version  # noqa: E402

from tests.filter_cases import Case, Pair, cases, judge  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=10_000, help="queries to compare")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    verdicts: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    examples: list[dict[str, Any]] = []
    started = time.perf_counter()

    def compare(case: Case) -> None:
        with Pair(case) as pair:
            for query in case.queries[: args.cases - verdicts.total()]:
                try:
                    verdict, kind = judge(pair, query)
                except Exception:  # the comparison itself failed: a disagreement too
                    verdict, kind = "crashed", "crashed"
                    traceback.print_exc()
                verdicts[verdict] += 1
                kinds[kind] += 1
                if verdict != "agree" and len(examples) < 20:
                    examples.append(
                        {"verdict": verdict, "kind": kind}
                        | {"nodes": repr(case.nodes)[:2000], "query": repr(query)[:2000]}
                    )

    batch = 0
    while verdicts.total() < args.cases:  # batches of examples, each batch its own seed
        run = seed(args.seed * 1_000_003 + batch)(
            settings(
                max_examples=200,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(given(case=cases())(compare))
        )
        run()
        batch += 1
    seconds = time.perf_counter() - started
    cases_run = verdicts.total()
    results = {
        "command": f"python bench/filters_differential.py --cases {args.cases} --seed {args.seed}",
        "llama_index_core": llama_index_version,
        "machine": f"{platform.machine()}, python {platform.python_version()}",
        "cases": cases_run,
        "agreements": verdicts["agree"],
        "disagreements": cases_run - verdicts["agree"],
        "verdicts": dict(verdicts.most_common()),
        "reference_outcomes": dict(kinds.most_common()),
        "seconds": round(seconds, 1),
        "disagreeing_examples": examples,
    }
    out = ROOT / "bench" / "filters_differential.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{cases_run} cases, {results['disagreements']} disagreements in {seconds:.0f} s")
    for kind, count in kinds.most_common():
        print(f"  reference {kind}: {count}")
    for verdict, count in verdicts.most_common():
        print(f"  {verdict}: {count}")
    print(f"saved {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
