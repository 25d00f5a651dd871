"""The cold path: a query answered by ranged reads of the partition index, the candidates' rows and
records, every byte checked; differential against the in-memory exact search."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from functions import ivf
from functions.catalog import fetch_artifact, index_key
from functions.cold import ColdIndex, NeedsWarm
from functions.errors import IntegrityError
from functions.filters import Condition, FilterGroup
from functions.search import Hit, SearchIndex, checked_query
from functions.storage import LocalStore

from .cold_fixtures import Corpus, Remote, clustered, near, publish_to, write

N, PARTITIONS, K = 6000, 64, 10


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("cold")
    vectors = clustered(N, seed=3)
    manifest = write(root / "built", vectors, PARTITIONS)
    store = LocalStore(root / "store")
    publish_to(store, root / "built", manifest, "stable")
    return Corpus(store, root / "built", manifest, vectors, near(vectors, 60, seed=4))


@pytest.fixture(scope="module")
def warm(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> SearchIndex:
    return SearchIndex(fetch_artifact(corpus.store, corpus.manifest, tmp_path_factory.mktemp("c")))


def cold_search(
    cold: ColdIndex, query: np.ndarray, top_k: int = K, admitted: np.ndarray | None = None
) -> list[Hit]:
    exact, norm = checked_query(query, cold.dim, top_k)
    return cold.search(exact, norm, top_k, admitted)


def test_the_builder_writes_a_partition_index_above_the_threshold(corpus: Corpus) -> None:
    assert {ivf.HEAD, ivf.PARTS} <= set(corpus.manifest.files)
    assert ivf.partitions(ivf.MIN_ROWS - 1) == 0
    assert ivf.partitions(100_000) == 316
    head = ColdIndex(Remote(corpus.store), corpus.manifest).head
    assert head.nlist == PARTITIONS
    assert int(head.bounds[-1]) == corpus.manifest.files[ivf.PARTS].size
    # Every row is in exactly one partition, with its digests.
    cold = ColdIndex(Remote(corpus.store), corpus.manifest)
    rows = np.concatenate([p.rows for p in cold._partitions(list(range(PARTITIONS)))])
    assert sorted(rows.tolist()) == list(range(N))


def test_cold_answers_are_the_exact_answers_within_the_recall_claimed(
    corpus: Corpus, warm: SearchIndex
) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest, probes=8)
    found = 0
    for query in corpus.queries:
        hits, truth = cold_search(cold, query), warm.search(query, K)
        exact = {hit.row: hit for hit in truth}
        found += sum(hit.row in exact for hit in hits)
        for hit in hits:  # a hit shared with the exact search is that hit: score and record
            if hit.row in exact:
                assert (hit.score, hit.record) == (exact[hit.row].score, exact[hit.row].record)
        if {hit.row for hit in hits} == set(exact):
            assert [hit.row for hit in hits] == [hit.row for hit in truth]
    assert found / (K * len(corpus.queries)) >= 0.9


def test_probing_every_partition_is_the_exact_search(corpus: Corpus, warm: SearchIndex) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest, probes=PARTITIONS, candidates=N)
    for query in corpus.queries[:5]:
        assert cold_search(cold, query) == warm.search(query, K)


def test_a_query_reads_its_partitions_once_then_only_rows_and_records(corpus: Corpus) -> None:
    remote = Remote(corpus.store)
    cold = ColdIndex(remote, corpus.manifest, probes=4, candidates=2)
    assert remote.reads == 1  # the head
    cold_search(cold, corpus.queries[0])
    assert cold.gets == 4 + 2 * (2 * K)  # partitions, then the 20 candidates' rows and records
    before = cold.gets
    cold_search(cold, corpus.queries[0])
    assert cold.gets - before == 2 * (2 * K)  # the partitions were kept


def corrupt(corpus: Corpus, tmp_path: Path, name: str, offset: int) -> LocalStore:
    """A copy of the store in which one byte of one file of the index is flipped."""
    shutil.copytree(corpus.store.root, tmp_path / "store")
    store = LocalStore(tmp_path / "store")
    path = store.root / index_key(corpus.manifest.index_id, name)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    return store


def test_a_corrupted_head_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    store = corrupt(corpus, tmp_path, ivf.HEAD, 100)
    with pytest.raises(IntegrityError, match=r"ivf.head: sha256 of block 0"):
        ColdIndex(Remote(store), corpus.manifest)


def test_a_corrupted_partition_is_refused(corpus: Corpus, tmp_path: Path) -> None:
    head = ColdIndex(Remote(corpus.store), corpus.manifest).head
    start, end = head.span(5)
    store = corrupt(corpus, tmp_path, ivf.PARTS, (start + end) // 2)
    cold = ColdIndex(Remote(store), corpus.manifest, probes=1)
    with pytest.raises(IntegrityError, match="sha256 of partition 5 does not match"):
        cold_search(cold, head.centroids[5])
    cold_search(cold, head.centroids[6])  # the others still answer


@pytest.mark.parametrize(
    ("name", "message"),
    [("vectors.f32", "vectors.f32: row"), ("docstore.jsonl", "docstore.jsonl: record")],
)
def test_a_corrupted_row_or_record_is_refused(
    corpus: Corpus, warm: SearchIndex, tmp_path: Path, name: str, message: str
) -> None:
    query = corpus.queries[0]
    best = warm.search(query, 1)[0].row
    if name == "vectors.f32":
        offset = best * 4 * corpus.vectors.shape[1] + 7
    else:
        offset = int(warm.artifact._offsets[best]) + 20
    cold = ColdIndex(Remote(corrupt(corpus, tmp_path, name, offset)), corpus.manifest)
    with pytest.raises(IntegrityError, match=message):
        cold_search(cold, query)


def test_filtered_cold_queries_agree_with_the_exact_path(corpus: Corpus, warm: SearchIndex) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest, probes=8)
    from functions.filters import Filters

    filters = Filters(cold.columns())  # type: ignore[arg-type]
    found = total = 0
    for where in (
        FilterGroup((Condition("k", "==", 3),)),
        FilterGroup((Condition("k", "in", [1, 2]),)),
        FilterGroup((Condition("k", "!=", 0),)),
    ):
        admitted = filters.mask(where)
        assert np.array_equal(admitted, warm.mask(where))
        for query in corpus.queries[:20]:
            hits = cold_search(cold, query, admitted=admitted)
            truth = {hit.row: hit.score for hit in warm.search(query, K, where)}
            assert all(admitted[hit.row] for hit in hits)
            assert len(hits) == K
            assert all(truth.get(hit.row, hit.score) == hit.score for hit in hits)
            found += len({hit.row for hit in hits} & set(truth))
            total += K
    assert found / total >= 0.9


def test_a_filter_admitting_few_rows_near_the_query_needs_the_warm_path(corpus: Corpus) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest, probes=2)
    from functions.filters import Filters

    rare = Filters(cold.columns()).mask(FilterGroup((Condition("rare", "==", True),)))  # type: ignore[arg-type]
    assert 0 < rare.sum() < 2 * K  # and fewer than K of them in any 8 partitions
    with pytest.raises(NeedsWarm):
        cold_search(cold, corpus.queries[0], admitted=rare)


def test_the_ids_are_not_on_the_cold_path(corpus: Corpus) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest)
    with pytest.raises(NeedsWarm):
        cold.columns().ids()


def test_the_partitions_kept_are_bounded(corpus: Corpus) -> None:
    cold = ColdIndex(Remote(corpus.store), corpus.manifest, probes=8, cache_bytes=20_000)
    for query in corpus.queries[:5]:
        cold_search(cold, query)
        assert cold._cached == sum(part.nbytes for part in cold._parts.values())
        assert cold._cached <= 20_000 or len(cold._parts) == 1
    cold.close()
    assert (cold._cached, len(cold._parts)) == (0, 0)
