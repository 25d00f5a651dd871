"""From the store to memory: a function answers on demand while its index downloads, switches to
memory without a pause, follows channel moves during the download, and never serves a corrupt
file."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from functions.backends import ArtifactBackend
from functions.composition import compose
from functions.errors import IntegrityError
from functions.filters import Condition, FilterGroup
from functions.search import SearchIndex
from functions.settings import Settings
from functions.storage import LocalStore
from functions.tiered import TieredSearcher

from .cold_fixtures import Corpus, Remote, TableEmbedder, clustered, near, publish_to, write

N, PARTITIONS, K = 5000, 50, 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("tiered")
    vectors = clustered(N, seed=5)
    manifest = write(root / "built", vectors, PARTITIONS)
    store = LocalStore(root / "store")
    publish_to(store, root / "built", manifest, "stable")
    return Corpus(store, root / "built", manifest, vectors, near(vectors, 40, seed=6))


def opened(remote: Remote, corpus: Corpus, cache: Path, probes: int = 16) -> TieredSearcher:
    searcher = ArtifactBackend(lambda: remote, cache, probes=probes).open(corpus.manifest, {})
    assert isinstance(searcher, TieredSearcher)
    return searcher


def test_a_local_store_or_an_index_without_partitions_is_read_whole(
    corpus: Corpus, tmp_path: Path
) -> None:
    backend = ArtifactBackend(lambda: corpus.store, tmp_path)
    assert isinstance(backend.open(corpus.manifest, {}), SearchIndex)
    small = write(tmp_path / "small", clustered(300, seed=1), 0, tag="1")
    publish_to(corpus.store, tmp_path / "small", small, "small")
    remote = ArtifactBackend(lambda: Remote(corpus.store), tmp_path / "cache")
    assert isinstance(remote.open(small, {}), SearchIndex)
    off = ArtifactBackend(lambda: Remote(corpus.store), tmp_path / "c2", on_demand=False)
    assert isinstance(off.open(corpus.manifest, {}), SearchIndex)


def test_the_download_begins_after_the_first_answer(corpus: Corpus, tmp_path: Path) -> None:
    remote = Remote(corpus.store)
    searcher = opened(remote, corpus, tmp_path)
    assert searcher.tier == "on_demand"
    time.sleep(0.2)
    assert not remote.fetching.is_set()  # nothing competes with the first query's reads
    hits = searcher.search(corpus.queries[0], K)
    assert len(hits) == K
    assert remote.fetching.wait(5)
    assert searcher.wait_warm(30)
    assert searcher.tier == "memory"
    reads = remote.reads
    assert searcher.search(corpus.queries[1], K)
    assert remote.reads == reads  # from memory
    searcher.close()


def test_queries_during_the_switch_all_succeed(corpus: Corpus, tmp_path: Path) -> None:
    remote = Remote(corpus.store)
    remote.gate.clear()
    searcher = opened(remote, corpus, tmp_path)
    errors: list[BaseException] = []
    tiers: set[str] = set()
    stop = threading.Event()

    def ask(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            query = corpus.queries[int(rng.integers(len(corpus.queries)))]
            try:
                tiers.add(searcher.tier)
                assert len(searcher.search(query, K)) == K
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=ask, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    remote.gate.set()  # the download completes while the four keep asking
    assert searcher.wait_warm(30)
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert errors == []
    assert tiers == {"on_demand", "memory"}
    searcher.close()


def test_queries_the_cold_path_cannot_answer_wait_for_memory(
    corpus: Corpus, tmp_path: Path
) -> None:
    remote = Remote(corpus.store)
    remote.gate.clear()
    searcher = opened(remote, corpus, tmp_path, probes=2)  # 8 partitions at most, of 50
    threading.Timer(0.3, remote.gate.set).start()
    rare = FilterGroup((Condition("rare", "==", True),))
    started = time.monotonic()
    hits = searcher.search(corpus.queries[0], K, rare)
    assert time.monotonic() - started >= 0.25  # it waited for the download
    assert searcher.tier == "memory"
    assert hits == searcher.search(corpus.queries[0], K, rare)
    assert len(hits) == int(np.count_nonzero(searcher.mask(rare)))
    assert searcher.search(corpus.queries[0], K, doc_ids=["doc-3"])[0].record.doc_id == "doc-3"
    searcher.close()


def test_a_corrupt_file_never_serves_and_the_cold_path_goes_on(
    corpus: Corpus, tmp_path: Path
) -> None:
    import shutil

    shutil.copytree(corpus.store.root, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    path = store.root / f"indexes/{corpus.manifest.index_id}/hashes.bin"
    path.write_bytes(b"\0" + path.read_bytes()[1:])
    remote = Remote(store)
    searcher = opened(remote, corpus, tmp_path / "cache")
    assert len(searcher.search(corpus.queries[0], K)) == K
    assert not searcher.wait_warm(30)
    assert searcher.tier == "on_demand"
    assert len(searcher.search(corpus.queries[1], K)) == K
    with pytest.raises(IntegrityError, match=r"hashes\.bin"):
        searcher.search(corpus.queries[0], K, node_ids=["node-00001"])
    searcher.close()


def test_a_channel_move_during_the_download_is_followed(corpus: Corpus, tmp_path: Path) -> None:
    remote = Remote(corpus.store)
    remote.gate.clear()
    settings = Settings(store_uri="s3://unused/x", cache_dir=tmp_path / "cache", index="stable")
    loader = compose(settings, store=remote, embedder_factory=lambda _: TableEmbedder())
    first = loader.load()
    assert first.index.tier == "on_demand"
    assert len(first.index.search(corpus.queries[0], K)) == K  # begins the download; held

    second = write(tmp_path / "second", clustered(N, seed=9), PARTITIONS, tag="2")
    publish_to(corpus.store, tmp_path / "second", second, "stable")
    assert loader.request_reload()
    deadline = time.monotonic() + 30
    while loader.reloads["succeeded"] < 1:
        assert time.monotonic() < deadline, loader.reloads
        time.sleep(0.01)
    service = loader.require()
    assert service.index_id == second.index_id
    assert service.index.tier == "on_demand"
    hits = service.index.search(corpus.queries[0], K)
    assert hits[0].record.id.endswith("2")

    remote.gate.set()  # the old index's download ends: thrown away, its files removed
    assert service.index.wait_warm(30)
    deadline = time.monotonic() + 30
    while (tmp_path / "cache" / corpus.manifest.index_id).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert first.index.tier == "on_demand"  # never served from memory
    assert (tmp_path / "cache" / second.index_id).exists()
    loader.close()


def test_readyz_and_metrics_say_where_answers_come_from(corpus: Corpus, tmp_path: Path) -> None:
    import httpx

    from functions.app import create_app

    from .servers import serve

    remote = Remote(corpus.store)
    remote.gate.clear()
    settings = Settings(
        store_uri="s3://unused/x", cache_dir=tmp_path / "cache", llm_provider="none"
    )
    loader = compose(settings, store=remote, embedder_factory=lambda _: TableEmbedder())
    loader.load()
    with serve(create_app(settings, loader=loader)) as url, httpx.Client(base_url=url) as client:
        ready = client.get("/readyz").json()
        assert ready["serving_from"] == "on_demand"
        assert ready["on_demand_reads"] == {"gets": 0, "bytes": 0}
        assert "partition_index" in ready["timings_s"]
        assert "knative_rag_index_on_demand 1.0" in client.get("/metrics").text
        loader.require().index.search(corpus.queries[0], K)
        remote.gate.set()
        assert loader.require().index.wait_warm(30)
        ready = client.get("/readyz").json()
        assert ready["serving_from"] == "memory"
        assert ready["on_demand_reads"]["gets"] > 0
        assert {"warm_download", "warm_after_open"} <= set(ready["timings_s"])
        metrics = client.get("/metrics").text
        assert "knative_rag_index_on_demand 0.0" in metrics
        assert 'knative_rag_on_demand_reads_total{unit="bytes"}' in metrics
    loader.close()
