"""bench/func_cold_start.py, the README's command at a small size, runs end to end: both servers
start cold on the same index, and the saved figures are the printed ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_func_cold_start_bench_runs_both_servers(tmp_path: Path) -> None:
    out = tmp_path / "func_cold_start.json"
    command = [sys.executable, str(ROOT / "bench" / "func_cold_start.py")]
    done = subprocess.run(
        [*command, "--chunks", "2000", "--repeat", "1", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    saved = json.loads(out.read_text())
    figures = saved["median_s"]["2000"]
    assert set(figures) == {"uvicorn", "func-python"}
    for server, measured in figures.items():
        # Ready before the first answer, and both after the interpreter started.
        assert 0 < measured["interpreter_s"] < measured["probe_ready_s"], server
        assert measured["probe_ready_s"] <= measured["first_200_s"], server
        line = f"{2000:>7,} {server:<12} {measured['probe_ready_s']:6.2f}s"
        assert line in done.stdout
