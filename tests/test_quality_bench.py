"""bench/quality.py, the README's command, runs end to end and saves what it prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.semantic

ROOT = Path(__file__).resolve().parent.parent


def test_the_quality_bench_runs_and_saves_its_figures(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "quality.py"), "--k", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    saved = json.loads(out.read_text())
    (row,) = saved["by_k"]
    assert row["k"] == 3
    questions = json.loads((ROOT / "tests" / "data" / "questions.json").read_text())["questions"]
    assert saved["questions"] == len(questions)
    # The replaced rebuild retrieves worse and the gate refuses it, as the README's table says.
    assert row["replaced_mrr"] < row["mrr"] - 0.02
    assert row["gate"] == "refused"
    assert f"{row['hit_rate']:9.4f} {row['mrr']:7.4f}" in done.stdout
