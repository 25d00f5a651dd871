"""``python bench/run.py`` (``make bench``'s first step) at a size that runs in a minute: the real
builder CLI builds an index large enough to have a partition index, and real function processes
cold-start from moto's S3 in both modes. On moto they download the whole index before answering
(moto reads a whole object for every range); the figures are checked for sense, not speed. No
chart: matplotlib comes with the bench extra, which ``make bench`` installs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_load_path_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    command = [
        sys.executable,
        "bench/run.py",
        *("--sizes", "4200", "--repeat", "1", "--dim", "32", "--baseline-sizes", ""),
        *("--load-size", "0", "--work", str(tmp_path / "work"), "--out", str(out), "--no-chart"),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    entry = json.loads(out.read_text())["sizes"]["4200"]
    assert entry["built_by"] == "index_builder CLI"
    assert entry["chunks"] >= 4096  # a partition index was written: on demand would apply
    for mode, answer_type in (("retrieve", None), ("answer", "generated")):
        run = entry["cold_start"][mode]["runs"][0]
        assert run["answer_type"] == answer_type
        assert 0 < run["download_and_verify_s"] < run["total_s"]
    assert not (ROOT / "bench" / "results.json").samefile(out)
