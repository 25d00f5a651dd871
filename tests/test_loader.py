"""The loader's memory budget: an index too large for the container is refused before it is
fetched at cold start, and on a hot reload the old index keeps serving."""

from __future__ import annotations

import gc
import time
import weakref
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from functions.artifact import DATA_FILES
from functions.composition import MiB, compose, index_budget, memory_limit
from functions.embeddings import OllamaEmbedder
from functions.loader import IndexLoader
from functions.s3 import S3Store
from functions.settings import Settings
from functions.storage import Fetched, Store, Versioned, open_store
from index_builder.job import run_build
from index_builder.publish import promote

from .conftest import Ollama, Published, build_index, settings_for, write_corpus
from .servers import Gate, serve


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
    loader = compose(settings)
    loader.backend.budget = size - 1
    loader.start()
    assert loader.done.wait(30)
    assert loader.state == "failed"
    assert loader.reason == (
        f"Index larger than the memory budget: index {published.index_id} is 0 MiB, more than "
        "the memory budget of 0 MiB (RAG_MAX_INDEX_MB or the memory limit)"
    )
    assert not (tmp_path / "cache" / published.index_id).exists()
    assert ollama.double.embedded == []  # not even the model check ran

    loader = compose(settings)
    loader.backend.budget = size
    loader.start()
    assert loader.done.wait(30)
    assert loader.state == "ready", loader.reason


def test_max_index_mb_sets_the_budget(published: Published, ollama: Ollama, tmp_path: Path) -> None:
    loader = compose(settings_for(published.store_uri, ollama, tmp_path, max_index_mb=3))
    assert loader.backend.budget == 3 * MiB
    assert loader.load().index_id == published.index_id


def test_a_reload_over_budget_keeps_the_old_index(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    source = write_corpus(tmp_path / "docs", documents=2)
    first = build_index(s3_uri, ollama, source).index_id
    loader = compose(settings_for(s3_uri, ollama, tmp_path, llm_provider="none"))
    service = loader.load()
    loader.backend.budget = sum(entry.size for entry in service.manifest.files.values())

    (source / "more.md").write_text("# More\n\nA further document about lakes.\n")
    second = build_index(s3_uri, ollama, source).index_id
    assert loader.request_reload()
    deadline = time.monotonic() + 30
    while loader.reloads != {"failed": 1}:
        assert time.monotonic() < deadline, loader.reloads
        time.sleep(0.01)
    assert loader.require() is service
    assert service.index_id == first
    assert not (tmp_path / "cache" / second).exists()


def test_a_cold_start_retries_a_failing_store_with_backoff(
    published: Published, ollama: Ollama, s3_endpoint: str, tmp_path: Path
) -> None:
    # botocore retries each request 4 times; 6 refusals make the first load attempt fail whole.
    gate = Gate(s3_endpoint, refuse=6)
    with serve(gate) as url:
        store = store_behind(published.store_uri, url)
        loader = compose(
            settings_for(published.store_uri, ollama, tmp_path, llm_provider="none"), store=store
        )
        loader.start()
        assert loader.done.wait(60)
    assert loader.state == "ready", loader.reason
    assert (gate.refused, loader.attempts) == (6, 2)


def test_a_cold_start_gives_up_at_the_startup_deadline(
    published: Published, ollama: Ollama, s3_endpoint: str, tmp_path: Path
) -> None:
    gate = Gate(s3_endpoint, refuse=10**9)
    with serve(gate) as url:
        store = store_behind(published.store_uri, url, botocore_attempts=1)  # ours only
        settings = settings_for(
            published.store_uri, ollama, tmp_path, llm_provider="none", startup_timeout_s=4
        )
        loader = compose(settings, store=store)
        loader.start()
        assert loader.done.wait(4 + 30)  # the deadline, plus one request's worth of retries
    assert loader.state == "failed"
    assert loader.attempts >= 2
    assert loader.reason is not None
    assert loader.reason.startswith("Object store error: ")
    assert "SlowDown" in loader.reason
    assert loader.reason.endswith(f"(gave up after {loader.attempts} attempts)")


def store_behind(store_uri: str, endpoint: str, botocore_attempts: int | None = None) -> S3Store:
    """The store at ``store_uri``, reached through ``endpoint`` (a gate)."""
    store = S3Store(*store_uri.removeprefix("s3://").split("/", 1))
    config = store.client.meta.config
    if botocore_attempts is not None:
        config = config.merge(
            Config(retries={"mode": "standard", "max_attempts": botocore_attempts})
        )
    store.client = boto3.client("s3", endpoint_url=endpoint, config=config)
    return store


def test_a_reload_lets_the_old_index_go(s3_uri: str, ollama: Ollama, tmp_path: Path) -> None:
    source = write_corpus(tmp_path / "docs", documents=2)
    build_index(s3_uri, ollama, source)
    loader = compose(settings_for(s3_uri, ollama, tmp_path))  # answer mode: an LLM engine
    old = loader.load()
    old.warm()  # the LlamaIndex engine, which holds the service's embedder
    old.retrieve("rivers", 2, {})
    (source / "more.md").write_text("# More\n\nA further document about lakes.\n")
    build_index(s3_uri, ollama, source)
    assert loader.request_reload()
    deadline = time.monotonic() + 30
    while loader.reloads != {"succeeded": 1}:
        assert time.monotonic() < deadline, loader.reloads
        time.sleep(0.01)
    # A request that began on the old index finishes on it, after the swap...
    assert len(old.retrieve("rivers", 2, {}).sources) == 2
    gone = weakref.ref(old.index)  # what holds the memory maps
    del old
    gc.collect()
    # ...and then nothing holds it: its memory maps (the cache is memory on Knative) are freed.
    assert gone() is None


def test_the_old_index_goes_while_the_new_one_is_still_warming(
    s3_uri: str, ollama: Ollama, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reload thread warms the new index's answer engine after the swap (a second or more):
    meanwhile it must not hold the old one (it counted the reload as done before letting go of
    it, and a CI run caught the old index still alive)."""
    warm = IndexLoader._warm
    warmed: list[str] = []

    def slow(service: Any) -> None:
        warmed.append(service.index_id)
        if len(warmed) > 1:  # the reload's, not the cold start's
            time.sleep(1.5)
        warm(service)

    monkeypatch.setattr(IndexLoader, "_warm", staticmethod(slow))
    test_a_reload_lets_the_old_index_go(s3_uri, ollama, tmp_path)


def test_a_cold_start_does_not_retry_what_will_not_pass(
    published: Published, ollama: Ollama, s3_endpoint: str, tmp_path: Path
) -> None:
    gate = Gate(s3_endpoint, refuse=10**9, refusal=(403, "AccessDenied"))
    with serve(gate) as url:
        settings = settings_for(published.store_uri, ollama, tmp_path, llm_provider="none")
        loader = compose(settings, store=store_behind(published.store_uri, url))
        loader.start()
        assert loader.done.wait(30)
    assert (loader.state, loader.attempts, gate.refused) == ("failed", 1, 1)
    assert loader.reason is not None
    assert "AccessDenied" in loader.reason

    # Nor a model the model server does not have.
    missing = settings_for(
        published.store_uri, ollama, tmp_path, llm_provider="none", embed_model="no-such-model"
    )
    loader = compose(missing)
    loader.start()
    assert loader.done.wait(30)
    assert (loader.state, loader.attempts) == ("failed", 1)
    assert loader.reason is not None
    assert "404" in loader.reason


class RecordingStore:
    """A real store that records what it is asked for: ``get`` keys and ``fetch`` keys."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.gets: list[str] = []
        self.fetches: list[str] = []

    def get(self, key: str) -> Versioned:
        self.gets.append(key)
        return self.store.get(key)

    def fetch(self, key: str, dest: Path, *, size: int, block_size: int) -> Fetched:
        self.fetches.append(key)
        return self.store.fetch(key, dest, size=size, block_size=block_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def clear(self) -> None:
        self.gets.clear()
        self.fetches.clear()


def wait_for_reloads(loader: IndexLoader, expected: dict[str, int]) -> None:
    deadline = time.monotonic() + 15
    while loader.reloads != expected:
        assert time.monotonic() < deadline, loader.reloads
        time.sleep(0.01)


def test_an_index_of_another_model_is_refused_before_download_and_remembered(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    """The model check needs only the manifest's probe: a refused index costs the channel and
    the manifest, no data file, and the same index again costs the channel only, until the
    channel moves."""
    source = write_corpus(tmp_path / "docs", documents=2)
    build_index(s3_uri, ollama, source)
    store = RecordingStore(open_store(s3_uri))
    settings = settings_for(
        s3_uri,
        ollama,
        tmp_path,
        llm_provider="none",
        embed_model="nomic-embed-text",  # this revision's model, whatever the index says
        reload_min_interval_s=0,
    )
    loader = compose(settings, store=store)
    first = loader.load().index_id
    other = run_build(
        open_store(s3_uri), str(source), OllamaEmbedder("other-embed", ollama.url),
        channel="stable", chunk_size=64, chunk_overlap=8,
    ).index_id  # fmt: skip
    store.clear()
    assert loader.request_reload()
    wait_for_reloads(loader, {"failed": 1})
    refused = (list(store.gets), list(store.fetches))
    store.clear()
    assert loader.request_reload()
    wait_for_reloads(loader, {"failed": 1, "skipped_refused": 1})
    again = (list(store.gets), list(store.fetches))

    (source / "more.md").write_text("# More\n\nA further document about lakes.\n")
    third = build_index(s3_uri, ollama, source).index_id  # the channel moves on
    store.clear()
    assert loader.request_reload()
    wait_for_reloads(loader, {"failed": 1, "skipped_refused": 1, "succeeded": 1})
    assert refused == (["channels/stable.json", f"indexes/{other}/manifest.json"], [])
    assert again == (["channels/stable.json"], [])
    assert (loader.require().index_id, len(store.fetches)) == (third, len(DATA_FILES))
    assert first != other
    assert not (tmp_path / "cache" / other).exists()


def test_a_burst_of_reload_requests_costs_at_most_two_reloads(
    s3_uri: str, ollama: Ollama, tmp_path: Path
) -> None:
    """One reload reads while the burst begins, one more after it: the channel moved during
    the burst, and the last reload serves where it points."""
    source = write_corpus(tmp_path / "docs", documents=2)
    build_index(s3_uri, ollama, source)
    (source / "more.md").write_text("# More\n\nA further document about lakes.\n")
    newer = build_index(s3_uri, ollama, source, channel=None).index_id
    store = RecordingStore(open_store(s3_uri))
    settings = settings_for(
        s3_uri, ollama, tmp_path, llm_provider="none", reload_min_interval_s=1.5
    )
    loader = compose(settings, store=store)
    loader.load()
    store.clear()
    for n in range(100):
        if n == 50:
            promote(open_store(s3_uri), "stable", newer)
        assert loader.request_reload()
        time.sleep(0.005)  # a client sending events one after another, each a few ms
    wait_for_reloads(loader, {"unchanged": 1, "succeeded": 1, "coalesced": 98})
    assert loader.require().index_id == newer
    assert store.gets.count("channels/stable.json") == 2
