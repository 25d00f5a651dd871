"""A builder killed at any point never leaves a channel on an incomplete index, and gc cleans up
after it. The builder runs as a real process; a proxy in front of the store (or the model
server) holds one exact request, and the process is killed with SIGKILL while it waits."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from functions.catalog import fetch_artifact, read_manifest
from functions.composition import compose
from functions.storage import open_store
from index_builder.publish import catalog, collect_garbage

from .conftest import Ollama, settings_for, write_corpus
from .servers import Gate, kill_when_held, serve

ROOT = Path(__file__).resolve().parent.parent
# Where to stop the builder: the server the gate stands in front of, and the request it holds.
POINTS = {
    "embedding": ("ollama", r"^POST /api/embed$"),
    "uploading-data": ("s3", r"^PUT /.*/indexes/[^/]+/docstore\.offsets$"),  # third of six files
    "writing-manifest": ("s3", r"^PUT /.*/indexes/[^/]+/manifest\.json$"),
    "moving-channel": ("s3", r"^PUT /.*/channels/stable\.json$"),
}


def builder(source: Path, store_uri: str, *, s3: str, ollama: str) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "AWS_ENDPOINT_URL_S3": s3,
        "OLLAMA_HOST": ollama,
        "RAG_CHUNK_SIZE": "64",
        "RAG_CHUNK_OVERLAP": "8",
    }
    command = [sys.executable, "-m", "index_builder", "--store", store_uri, "build"]
    return subprocess.Popen(
        [*command, "--source", str(source), "--channel", "stable", "--create-channel"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("point", list(POINTS))
def test_a_killed_builder_leaves_the_channel_on_a_complete_index(
    point: str, s3_uri: str, s3_endpoint: str, ollama: Ollama, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path / "docs", documents=3)
    first = builder(source, s3_uri, s3=s3_endpoint, ollama=ollama.url)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    previous = out.strip()
    (source / "new.md").write_text("# New\n\nA document the killed build was adding.\n")

    server, hold = POINTS[point]
    gate = Gate(s3_endpoint if server == "s3" else ollama.url, hold)
    with serve(gate) as gate_url:
        proc = builder(
            source,
            s3_uri,
            s3=gate_url if server == "s3" else s3_endpoint,
            ollama=gate_url if server == "ollama" else ollama.url,
        )
        kill_when_held(gate, proc)

    store = open_store(s3_uri)
    # The channel still names the previous index, whole and verified; a function serves it.
    assert read_manifest(store, "stable").index_id == previous
    fetch_artifact(store, read_manifest(store, "stable"), tmp_path / "verify")
    loader = compose(settings_for(s3_uri, ollama, tmp_path, llm_provider="none"))
    assert loader.load().index_id == previous

    indexes, _ = catalog(store)
    left = [info for info in indexes if info.index_id != previous]
    expected = {
        "embedding": [],  # nothing was uploaded yet
        "uploading-data": [False],  # two data files and no manifest: incomplete
        "writing-manifest": [False],
        "moving-channel": [True],  # complete, but no channel points at it
    }[point]
    assert [info.complete for info in left] == expected
    if point == "moving-channel":  # only the pointer move was lost: the index is promotable
        assert read_manifest(store, left[0].index_id).index_id == left[0].index_id
    # gc deletes what the dead build left (incomplete ones once old enough), never the channel's.
    collected = collect_garbage(store, keep=0, incomplete_after=timedelta(0))
    assert collected.indexes == [info.index_id for info in left]
    assert [info.index_id for info in catalog(store)[0]] == [previous]

    # The next scheduled run publishes as if nothing had happened.
    again = builder(source, s3_uri, s3=s3_endpoint, ollama=ollama.url)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert read_manifest(store, "stable").index_id == out.strip() != previous
