from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.catalog import read_channel
from functions.storage import open_store
from index_builder.__main__ import main

from .conftest import Ollama

ROOT = Path(__file__).resolve().parent.parent


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(list(args))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, ollama: Ollama) -> None:
    monkeypatch.setenv(
        "OLLAMA_HOST", ollama.url.removeprefix("http://")
    )  # Ollama's own host:port form
    monkeypatch.setenv("RAG_CHUNK_SIZE", "64")
    monkeypatch.setenv("RAG_CHUNK_OVERLAP", "8")


@pytest.mark.usefixtures("env")
def test_build_list_promote_gc(
    capsys: pytest.CaptureFixture[str], corpus: Path, s3_uri: str
) -> None:
    status, out, err = cli(
        capsys, "--store", s3_uri, "build", "--source", str(corpus), "--channel", "stable"
    )
    first = out.strip()
    assert status == 0
    assert f"built {first}: 6 documents" in err
    assert read_channel(open_store(s3_uri), "stable")[0].index_id == first

    (corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    status, out, err = cli(
        capsys, "--store", s3_uri, "build", "--source", str(corpus), "--channel", "stable"
    )
    second = out.strip()
    assert status == 0
    assert "1 embedded" in err

    status, out, _ = cli(capsys, "--store", s3_uri, "list")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("channel stable")
    assert lines[0].split()[3] == second
    # newest first by id; two builds in the same second order by their hash part
    assert [line.split()[1] for line in lines[1:]] == sorted([second, first], reverse=True)

    status, out, _ = cli(
        capsys,
        "--store",
        s3_uri,
        "promote",
        "--channel",
        "stable",
        "--index",
        first,
        "--expect",
        second,
    )
    assert (status, out) == (0, f"channel stable -> {first}\n")

    status, out, _ = cli(capsys, "--store", s3_uri, "gc", "--keep", "0")
    assert (status, out) == (0, f"deleted {second}\n")


@pytest.mark.usefixtures("env")
def test_lost_race_exits_3_and_overwrites_nothing(
    capsys: pytest.CaptureFixture[str], corpus: Path, s3_uri: str
) -> None:
    status, out, _ = cli(
        capsys, "--store", s3_uri, "build", "--source", str(corpus), "--channel", "stable"
    )
    first = out.strip()
    status, out, _ = cli(
        capsys, "--store", s3_uri, "build", "--source", str(corpus), "--channel", "other"
    )
    status, out, err = cli(
        capsys,
        "--store",
        s3_uri,
        "promote",
        "--channel",
        "stable",
        "--index",
        first,
        "--expect",
        out.strip(),
    )
    assert status == 3
    assert err.startswith("error: channel 'stable' points at")
    assert err.count("\n") == 1
    assert read_channel(open_store(s3_uri), "stable")[0].index_id == first


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--source", "/nonexistent"], "is not a folder"),
        (
            ["promote", "--channel", "stable", "--index", "20990101-000000-deadbeef"],
            "does not exist",
        ),
        (
            ["promote", "--channel", "Bad Name", "--index", "20990101-000000-deadbeef"],
            "channel name",
        ),
    ],
    ids=["missing-source", "missing-index", "bad-channel"],
)
def test_failures_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    status, out, err = cli(capsys, "--store", str(tmp_path / "store"), *args)
    assert (status, out) == (1, "")
    assert message in err
    assert err.count("\n") == 1


def test_no_store_is_a_one_line_error(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = cli(capsys, "list")
    assert (status, err) == (
        1,
        "error: Configuration error: no store: pass --store or set RAG_STORE_URI\n",
    )


def test_runs_as_a_module(tmp_path: Path, corpus: Path, ollama: Ollama) -> None:
    env = {**os.environ, "OLLAMA_HOST": ollama.url, "RAG_STORE_URI": str(tmp_path / "store")}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "index_builder",
            "build",
            "--source",
            str(corpus),
            "--channel",
            "stable",
        ],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (
        read_channel(open_store(str(tmp_path / "store")), "stable")[0].index_id
        == done.stdout.strip()
    )
