from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from functions.catalog import read_channel
from functions.settings import Settings
from functions.storage import open_store
from index_builder.__main__ import _parser, main

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
        capsys,
        *("--store", s3_uri, "build", "--source", str(corpus)),
        *("--channel", "stable", "--create-channel"),
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
        capsys,
        *("--store", s3_uri, "build", "--source", str(corpus)),
        *("--channel", "stable", "--create-channel"),
    )
    first = out.strip()
    (corpus / "doc-9.md").write_text("# Another\n\nOnly the second index has this.\n")
    status, out, _ = cli(
        capsys,
        *("--store", s3_uri, "build", "--source", str(corpus)),
        *("--channel", "other", "--create-channel"),
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
        (
            ["promote", "--channel", "canary", "--index", "stable"],
            "'stable' is not an index id",
        ),
    ],
    ids=["missing-source", "missing-index", "bad-channel", "not-an-index-id"],
)
def test_failures_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "store").mkdir()
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
            "--create-channel",
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


@pytest.mark.parametrize(
    "argv",
    [
        ["--store", "s3://b/rag", "list"],
        ["list", "--store", "s3://b/rag"],
        ["build", "--source", "./docs", "--store", "s3://b/rag", "--channel", "stable"],
        ["--store", "s3://b/rag", "build", "--source", "./docs", "--channel", "stable"],
        ["promote", "--store", "s3://b/rag", "--channel", "stable", "--index", "x"],
        ["gc", "--keep", "5", "--store", "s3://b/rag"],
        ["--store", "s3://other/rag", "gc", "--keep", "5", "--store", "s3://b/rag"],
    ],
    ids=[
        "before",
        "after",
        "build-after",
        "build-before",
        "promote-after",
        "gc-after",
        "last-wins",
    ],
)
def test_the_store_may_be_given_before_or_after_the_command(argv: list[str]) -> None:
    assert _parser(Settings()).parse_args(argv).store == "s3://b/rag"


def test_the_store_from_the_environment_is_not_undone_by_a_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAG_STORE_URI", "s3://b/rag")
    assert _parser(Settings()).parse_args(["list"]).store == "s3://b/rag"


@pytest.mark.parametrize("keep", ["-1", "two", "1.5"], ids=["negative", "word", "fraction"])
def test_gc_refuses_a_keep_that_is_not_a_count(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, keep: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--store", str(tmp_path), "gc", "--keep", keep])
    assert exited.value.code == 2
    assert "argument --keep:" in capsys.readouterr().err


def test_list_says_what_a_store_holds_or_that_it_does_not_exist(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, s3_uri: str
) -> None:
    bucket = s3_uri.split("/")[2]
    assert cli(capsys, "--store", "s3://no-such-bucket-here/rag", "list") == (
        1,
        "",
        "error: Object store error: bucket 'no-such-bucket-here' does not exist "
        "(s3://no-such-bucket-here/rag)\n",
    )
    assert cli(capsys, "--store", str(tmp_path / "typo"), "list") == (
        1,
        "",
        f"error: Object store error: store folder {tmp_path / 'typo'} does not exist\n",
    )
    assert cli(capsys, "--store", f"s3://{bucket}/no-such-prefix", "list") == (
        0,
        "",
        f"s3://{bucket}/no-such-prefix holds no indexes and no channels\n",
    )
    (tmp_path / "empty").mkdir()
    assert cli(capsys, "--store", str(tmp_path / "empty"), "list") == (
        0,
        "",
        f"{(tmp_path / 'empty').as_uri()} holds no indexes and no channels\n",
    )


@pytest.mark.usefixtures("env")
def test_a_channel_that_does_not_exist_is_created_only_when_asked(
    capsys: pytest.CaptureFixture[str], corpus: Path, s3_uri: str, ollama: Ollama
) -> None:
    build = ("--store", s3_uri, "build", "--source", str(corpus))
    status, out, _ = cli(capsys, *build, "--channel", "stable", "--create-channel")
    assert status == 0
    ollama.double.embedded.clear()
    (corpus / "doc-0.md").write_text("# New\n\nA changed first document.\n")
    assert cli(capsys, *build, "--channel", "stabel") == (
        1,
        "",
        "error: Not found: channel 'stabel' does not exist (did you mean 'stable'? channels: "
        "stable); to create it, pass --create-channel\n",
    )
    assert ollama.double.embedded == []  # refused before anything was embedded
    status, listing, _ = cli(capsys, "--store", s3_uri, "list")
    assert (status, len(listing.splitlines())) == (0, 2)  # the channel and its one index
    first = out.strip()
    status, _, err = cli(
        capsys, "--store", s3_uri, "promote", "--channel", "canary", "--index", first
    )
    assert (status, err.count("\n")) == (1, 1)
    assert "channel 'canary' does not exist" in err
    assert cli(
        capsys,
        *("--store", s3_uri, "promote", "--channel", "canary", "--index", first),
        "--create-channel",
    ) == (0, f"channel canary -> {first}\n", "")


@pytest.mark.usefixtures("env")
def test_a_build_into_a_store_it_cannot_write_fails_before_reading_or_embedding(
    capsys: pytest.CaptureFixture[str], corpus: Path, s3_endpoint: str, ollama: Ollama
) -> None:
    status, out, err = cli(
        capsys,
        *("--store", "s3://no-such-bucket-here/rag", "build"),
        *("--source", str(corpus / "not-read"), "--channel", "stable", "--create-channel"),
    )
    assert (status, out) == (1, "")
    assert err == (
        "error: Object store error: bucket 'no-such-bucket-here' does not exist "
        "(s3://no-such-bucket-here/rag/channels/stable.json)\n"
    )
    assert ollama.double.embedded == []


def test_an_unexpected_error_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object, **__: object) -> None:
        raise KeyError("columns")

    monkeypatch.setattr("index_builder.__main__.catalog", broken)
    (tmp_path / "store").mkdir()
    assert cli(capsys, "--store", str(tmp_path / "store"), "list") == (
        1,
        "",
        "error: unexpected KeyError: 'columns'\n",
    )


def test_a_reader_that_goes_away_is_not_an_error(tmp_path: Path) -> None:
    """`list | head -1`: the pipe closes before everything is written."""
    store = tmp_path / "store"
    pointer = '{"index_id": "%s", "manifest_sha256": "0", "published_at": "2026-12-01T00:00:00Z"}'
    for n in range(200):
        index_id = f"202612{n // 28 + 1:02d}-{n % 24:02d}0000-{n:08x}"
        (store / "indexes" / index_id).mkdir(parents=True)
        (store / "indexes" / index_id / "manifest.json").write_text("{}")
        (store / "channels").mkdir(exist_ok=True)
        (store / "channels" / f"c{n}.json").write_text(pointer % index_id)
    proc = subprocess.Popen(
        [sys.executable, "-m", "index_builder", "--store", str(store), "list"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert (proc.wait(timeout=60), err) == (0, "")
