"""Retrieval quality of the repository's own question set on its docs/ with the local model, and
what the quality gate says of a rebuild where half the documents were replaced by unrelated text.

    python bench/quality.py [--k 1 3 5 10]

Builds docs/ with all-MiniLM-L6-v2 (the local provider) into a temporary store, evaluates
tests/data/questions.json on it through the artifact backend (exact search) at each k, with the
builder's evaluator (``index_builder.quality``: LlamaIndex's HitRate and MRR), times an
evaluation computed and one read back from the store, then rebuilds with every other document's
text replaced by unrelated words and evaluates that too, with the gate's decision at the default
tolerance. Prints the figures and saves them to bench/quality.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from functions.embeddings import LocalEmbedder  # noqa: E402
from functions.storage import open_store  # noqa: E402
from index_builder.job import run_build  # noqa: E402
from index_builder.quality import Gate, artifact_evaluator, decide, read_questions  # noqa: E402

WORDS = ["harvest", "orchard", "apple", "pear", "ripe", "autumn", "cider", "barrel", "press"]


def replace_half(folder: Path) -> None:
    """Every other document (in name order) replaced by unrelated words."""
    for n, path in enumerate(sorted(folder.glob("*.md"))):
        if n % 2:
            rng = random.Random(path.name)
            paragraphs = (" ".join(rng.choice(WORDS) for _ in range(120)) for _ in range(6))
            path.write_text("\n\n".join(paragraphs) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--source", type=Path, default=ROOT / "docs")
    parser.add_argument("--questions", default=str(ROOT / "tests" / "data" / "questions.json"))
    parser.add_argument("--k", type=int, nargs="+", default=[1, 3, 5, 10])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "quality.json")
    args = parser.parse_args()

    questions = read_questions(args.questions)
    embedder = LocalEmbedder()
    with tempfile.TemporaryDirectory(prefix="rag-quality-") as tmp:
        store = open_store(str(Path(tmp) / "store"))
        started = time.perf_counter()
        good = run_build(store, str(args.source), embedder, channel="stable", create_channel=True)
        build_s = time.perf_counter() - started
        corpus = Path(tmp) / "replaced"
        shutil.copytree(args.source, corpus)
        replace_half(corpus)
        bad = run_build(store, str(corpus), embedder, channel=None)
        rows = []
        for k in args.k:
            evaluator = artifact_evaluator(store, questions, lambda *_: embedder, k=k)
            started = time.perf_counter()
            figures = evaluator.evaluate(good.index_id)
            computed_s = time.perf_counter() - started
            started = time.perf_counter()
            evaluator.evaluate(good.index_id)
            read_back_s = time.perf_counter() - started
            replaced = evaluator.evaluate(bad.index_id)
            decision = decide(Gate(), replaced, figures)
            evaluator.close()
            rows.append(
                {
                    "k": k,
                    "hit_rate": figures.hit_rate,
                    "mrr": figures.mrr,
                    "replaced_hit_rate": replaced.hit_rate,
                    "replaced_mrr": replaced.mrr,
                    "gate": "passed" if decision.passed else "refused",
                    "evaluate_s": round(computed_s, 3),
                    "read_back_s": round(read_back_s, 4),
                }
            )
    print(
        f"{len(questions.questions)} questions, {good.counts.documents} documents, "
        f"{good.counts.chunks} chunks, local:{embedder.model}, built in {build_s:.1f} s"
    )
    print(f"{'k':>3} {'hit rate':>9} {'MRR':>7} | half replaced: {'hit rate':>9} {'MRR':>7} gate")
    for row in rows:
        print(
            f"{row['k']:>3} {row['hit_rate']:9.4f} {row['mrr']:7.4f} |"
            f"{'':15}{row['replaced_hit_rate']:9.4f} {row['replaced_mrr']:7.4f} {row['gate']}"
            f"   (evaluated in {row['evaluate_s']:.2f} s, read back in {row['read_back_s']:.3f} s)"
        )
    results = {
        "command": "python bench/quality.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu_count": __import__("os").cpu_count(), "python": platform.python_version()},
        "questions": len(questions.questions),
        "questions_sha256": questions.sha256,
        "documents": good.counts.documents,
        "chunks": good.counts.chunks,
        "model": f"local:{embedder.model}",
        "build_s": round(build_s, 2),
        "by_k": rows,
    }
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")


if __name__ == "__main__":
    main()
