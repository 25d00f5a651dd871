"""What the builder shows: progress bars on a terminal (a real pseudo-terminal), one line per
phase and a summary table in a CronJob's log, and a dry run that changes nothing."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

from functions.catalog import read_channel
from functions.storage import open_store
from index_builder.progress import Progress, human_bytes

from .conftest import Ollama

ROOT = Path(__file__).resolve().parent.parent


def build(
    store: Path, source: Path, ollama: Ollama, *extra: str, terminal: bool = False
) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "OLLAMA_HOST": ollama.url,
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
        "RAG_STORE_URI": str(store),
    }
    command = [sys.executable, "-m", "index_builder", "build", "--source", str(source)]
    command += ["--channel", "stable", "--create-channel", *extra]
    if not terminal:
        done = subprocess.run(
            command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
        )
        return done.returncode, done.stdout, done.stderr
    leader, follower = pty.openpty()  # stderr is a terminal, as for a person at a shell
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=follower, text=True
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the process closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    out = proc.stdout.read() if proc.stdout else ""
    proc.wait(timeout=60)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def test_a_terminal_gets_progress_bars_and_a_summary(
    tmp_path: Path, corpus: Path, ollama: Ollama
) -> None:
    status, out, err = build(tmp_path / "store", corpus, ollama, terminal=True)
    assert status == 0, err
    for phase, count in (("reading", "6/6"), ("chunking", "6/6"), ("embedding", "/")):
        lines = err.replace("\r", "\n").splitlines()
        bar = [line for line in lines if line.startswith(phase) and "|" in line][-1]
        assert count in bar
        assert "100%" in bar
    assert "chunks/s" in err
    assert "uploading" in err
    assert "phase      done" in err  # the summary table
    assert out.strip() == read_channel(open_store(str(tmp_path / "store")), "stable")[0].index_id


def test_a_cronjob_log_gets_one_line_per_phase_and_a_summary(
    tmp_path: Path, corpus: Path, ollama: Ollama
) -> None:
    status, _, err = build(tmp_path / "store", corpus, ollama)
    assert status == 0, err
    assert "\r" not in err  # no bars
    lines = err.splitlines()
    logged = [json.loads(line)["message"] for line in lines if line.startswith("{")]
    assert [message.split(":")[0] for message in logged] == [
        "reading",
        "chunking",
        "embedding",
        "uploading",
    ]
    table = lines[lines.index(next(line for line in lines if line.startswith("phase"))) :]
    assert [row.split()[0] for row in table[2:6]] == [
        "reading",
        "chunking",
        "embedding",
        "uploading",
    ]
    assert "reused" in table[4]
    assert lines[-1].startswith("built ")


def test_a_dry_run_embeds_and_uploads_nothing(tmp_path: Path, corpus: Path, ollama: Ollama) -> None:
    store = tmp_path / "store"
    status, out, err = build(store, corpus, ollama)
    assert status == 0, err
    first = out.strip()
    (corpus / "doc-0.md").write_text("# Changed\n\nOnly this document changed since the build.\n")
    files_before = sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file())
    ollama.double.embedded.clear()
    status, out, err = build(store, corpus, ollama, "--dry-run")
    assert status == 0, err
    report = dict(line.split(None, 1) for line in out.splitlines()[1:])
    assert out.splitlines()[0] == (
        "dry run: nothing was embedded or uploaded; channel stable unchanged"
    )
    assert report["documents"] == "6"
    chunks, to_embed = int(report["chunks"]), int(report["to"].split()[1])
    reused = int(report["reused"].split()[0])
    assert to_embed == 1  # the changed document is one small chunk
    assert reused == chunks - 1
    assert f"vectors of {first}" in report["reused"]
    assert report["upload"].startswith("about ")
    assert ollama.double.embedded == []  # the model server was not called
    assert sorted(p.relative_to(store) for p in store.rglob("*") if p.is_file()) == files_before
    assert read_channel(open_store(str(store)), "stable")[0].index_id == first


def test_the_summary_table_lines_up() -> None:
    progress = Progress(bars=False)
    with progress.phase("embedding", 3, "chunks") as phase:
        phase.update(3)
        phase.notes.append("2 reused")
    with progress.phase("uploading", 2048, "B") as phase:
        phase.update(2048)
    header, rule, embedding, uploading = progress.summary().splitlines()
    assert header.split() == ["phase", "done", "time", "rate"]
    assert set(rule.replace(" ", "")) == {"-"}
    assert embedding.split()[:3] == ["embedding", "3", "chunks"]
    assert embedding.endswith("2 reused")
    assert uploading.split()[:3] == ["uploading", "2.0", "KiB"]
    assert human_bytes(1536) == "1.5 KiB"
