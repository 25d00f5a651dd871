"""The loader's memory budget: an index too large for the container is refused before it is
fetched at cold start, and on a hot reload the old index keeps serving."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from functions.embeddings import OllamaEmbedder
from functions.loader import IndexLoader, MiB, index_budget, memory_limit
from functions.settings import Settings
from functions.storage import open_store
from index_builder.job import run_build

from .conftest import Ollama, Published, settings_for, write_corpus


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("max\n", None),  # cgroup v2, no limit
        ("2147483648\n", 2 * 1024**3),  # cgroup v2 or v1, 2 GiB
        ("9223372036854771712\n", None),  # cgroup v1, no limit
    ],
)
def test_memory_limit_reads_the_cgroup(tmp_path: Path, content: str, expected: int | None) -> None:
    path = tmp_path / "memory.max"
    path.write_text(content)
    assert memory_limit((tmp_path / "absent", path)) == expected


def test_no_cgroup_means_no_limit(tmp_path: Path) -> None:
    assert memory_limit((tmp_path / "absent",)) is None


def test_the_budget_leaves_room_for_the_process_and_a_reload() -> None:
    settings = Settings()
    two_gib = 2048 * MiB
    assert index_budget(settings, follows_channel=False, limit=two_gib) == 1664 * MiB
    assert index_budget(settings, follows_channel=True, limit=two_gib) == 832 * MiB
    assert index_budget(settings, follows_channel=True, limit=None) is None
    explicit = Settings(max_index_mb=100)
    assert index_budget(explicit, follows_channel=True, limit=two_gib) == 100 * MiB
    assert index_budget(settings, follows_channel=True, limit=100 * MiB) == 0


def test_a_cold_start_refuses_an_index_over_budget_before_fetching_it(
    published: Published, ollama: Ollama, tmp_path: Path
) -> None:
    size = sum(entry.size for entry in published.artifact.manifest.files.values())
    assert size < MiB  # so that any budget refuses it only when set below it
    settings = settings_for(published.store_uri, ollama, tmp_path, llm_provider="none")
    loader = IndexLoader(settings)
    loader.budget = size - 1
    loader.start()
    assert loader.done.wait(30)
    assert loader.state == "failed"
    assert loader.reason == (
        f"Index larger than the memory budget: index {published.index_id} is 0 MiB, more than "
        "the memory budget of 0 MiB (RAG_MAX_INDEX_MB or the memory limit)"
    )
    assert not (tmp_path / "cache" / published.index_id).exists()
    assert ollama.double.embedded == []  # not even the model check ran

    loader = IndexLoader(settings)
    loader.budget = size
    loader.start()
    assert loader.done.wait(30)
    assert loader.state == "ready", loader.reason


def test_max_index_mb_sets_the_budget(published: Published, ollama: Ollama, tmp_path: Path) -> None:
    loader = IndexLoader(settings_for(published.store_uri, ollama, tmp_path, max_index_mb=3))
    assert loader.budget == 3 * MiB
    assert loader.load().index_id == published.index_id


def test_a_reload_over_budget_keeps_the_old_index(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path / "docs", documents=2)
    first = build(s3_uri, ollama, source)
    loader = IndexLoader(settings_for(s3_uri, ollama, tmp_path, llm_provider="none"))
    service = loader.load()
    loader.budget = sum(entry.size for entry in service.index.artifact.manifest.files.values())

    (source / "more.md").write_text("# More\n\nA further document about lakes.\n")
    second = build(s3_uri, ollama, source)
    assert loader.request_reload()
    deadline = time.monotonic() + 30
    while loader.reloads != {"failed": 1}:
        assert time.monotonic() < deadline, loader.reloads
        time.sleep(0.01)
    assert loader.require() is service
    assert service.index_id == first
    assert not (tmp_path / "cache" / second).exists()


def build(store_uri: str, ollama: Ollama, source: Path) -> str:
    return run_build(
        open_store(store_uri),
        str(source),
        OllamaEmbedder("nomic-embed-text", ollama.url),
        channel="stable",
        chunk_size=64,
        chunk_overlap=8,
    ).index_id
