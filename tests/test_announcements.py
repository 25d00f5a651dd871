"""The index builder announces each new index to K_SINK as dev.knative-rag.index.published,
with its counts, phases and skipped files; a sink that cannot be reached does not fail the build."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cloudevents.core.bindings.http import (
    HTTPMessage,
    from_http_event,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from functions.catalog import read_manifest
from functions.events import (
    INDEX_PUBLISHED,
)
from functions.storage import open_store
from index_builder.__main__ import main as builder

from .conftest import Ollama
from .servers import serve

QUERY = {"query": "facts about rivers", "mode": "retrieve", "top_k": 3}


@contextmanager
def sink() -> Iterator[tuple[str, list[Any]]]:
    received: list[Any] = []

    async def collect(request: Request) -> Response:
        received.append(from_http_event(HTTPMessage(dict(request.headers), await request.body())))
        return Response(status_code=202)

    with serve(Starlette(routes=[Route("/", collect, methods=["POST"])])) as url:
        yield url, received


def build_to_stable(store_uri: str, source: Path) -> int:
    """``python -m index_builder build`` of ``source`` into a new channel ``stable``."""
    command = ["--store", store_uri, "build", "--source", str(source)]
    return builder([*command, "--channel", "stable", "--create-channel"])


@pytest.mark.usefixtures("ollama")
def test_the_builder_announces_new_indexes_to_k_sink(
    s3_uri: str,
    ollama: Ollama,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    (corpus / "ls.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00")  # not a document: skipped
    with sink() as (url, received):
        monkeypatch.setenv("K_SINK", url)
        assert build_to_stable(s3_uri, corpus) == 0
    index_id = capsys.readouterr().out.strip()
    (announced,) = received
    assert (announced.get_type(), announced.get_source()) == (
        INDEX_PUBLISHED,
        "knative-rag/index-builder",
    )
    data = announced.get_data()
    assert (data["index_id"], data["channel"]) == (index_id, "stable")
    # The build's counts and phases travel with the announcement, for dashboards and alerts.
    manifest = read_manifest(open_store(s3_uri), index_id)
    assert data["counts"] == manifest.counts.model_dump()
    assert data["bytes"] == sum(entry.size for entry in manifest.files.values())
    assert list(data["phases"]) == ["reading", "chunking", "embedding", "uploading"]
    assert data["phases"]["embedding"]["done"] == manifest.counts.embedded
    assert data["phases"]["uploading"]["unit"] == "B"
    assert data["phases"]["reading"]["done"] == 7  # files looked at
    assert data["skipped"] == {
        "files": 1,
        "first": [{"source": "ls.txt", "reason": "binary content (NUL bytes), not text"}],
    }


def test_an_unreachable_k_sink_does_not_fail_the_build(
    s3_uri: str,
    ollama: Ollama,
    corpus: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("K_SINK", "http://127.0.0.1:9/")
    assert build_to_stable(s3_uri, corpus) == 0
    assert "warning: index.published not delivered to K_SINK" in capsys.readouterr().err
