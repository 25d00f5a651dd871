"""``python bench/cold_path.py`` as the README shows it, at a size that runs in seconds: a real
function process cold-starts from the range-serving S3, answers on demand, switches to memory.
The benchmark's own figures are checked for sense, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_cold_path_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "cold.json"
    command = [
        sys.executable,
        "bench/cold_path.py",
        *("--chunks", "5000", "--dim", "32", "--repeat", "1", "--queries", "8"),
        *("--latency-ms", "5", "--peers", "", "--work", str(tmp_path), "--out", str(out)),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())["5000x32"]
    assert report["store"] == {
        "server": "bench/range_s3.py",
        "latency_ms": 5.0,
        "bandwidth_mbps_per_stream": 100.0,
    }
    ours = report["results"]["knative-rag"]
    run = ours["runs"][0]
    assert ours["partitions"] == 71
    # The first answer came from a few ranged reads, not from the artifact.
    assert 0 < run["bytes_before_first_answer"] < ours["artifact_bytes"] / 4
    assert run["bytes_until_warm"] > ours["artifact_bytes"] / 2  # then it downloaded
    assert run["first_200_s"] < run["warm_serves_after_s"]
    assert {"partition_index", "warm_download"} <= set(run["timings_s"])
    assert 0 < run["rss_at_first_answer_mb"] <= run["peak_rss_mb"]
    assert 0 < run["rss_when_warm_mb"] <= run["peak_rss_mb"]
    assert run["rss_anon_mb"] > 0
    assert run["rss_file_mb"] > 0
    assert run["first_200_s"] < run["answer_first_200_s"] < 120  # a generated answer, later
    assert ours["median"]["warm_recall_at_10"] == 1.0
    assert ours["median"]["cold_recall_at_10"] >= 0.8
    assert not (ROOT / "bench" / "cold_path.json").samefile(out)
