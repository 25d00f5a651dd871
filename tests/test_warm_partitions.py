"""The index in memory scored by its nearest partitions: the builder lays the rows out partition
by partition, and a query without filters reads only the slices of the partitions nearest to it;
differential against the exact search."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from functions import ivf
from functions.artifact import Artifact, content_hash
from functions.backends import PARTITIONS_FROM_CHUNKS, ArtifactBackend, warm_probes
from functions.errors import IntegrityError
from functions.filters import Condition, FilterGroup
from functions.search import SearchIndex
from functions.storage import LocalStore
from functions.tiered import TieredSearcher

from .cold_fixtures import Corpus, Remote, clustered, near, publish_to, records, write

N, PARTITIONS, K = 6000, 60, 10
_LAYOUT_AT = 32  # the layout field's offset in the head's header


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    root = tmp_path_factory.mktemp("warm")
    vectors = clustered(N, seed=8)
    manifest = write(root / "built", vectors, PARTITIONS)
    store = LocalStore(root / "store")
    publish_to(store, root / "built", manifest, "stable")
    return Corpus(store, root / "built", manifest, vectors, near(vectors, 60, seed=9))


def opened(folder: Path, corpus: Corpus) -> Artifact:
    return Artifact(corpus.manifest, {name: folder / name for name in corpus.manifest.files})


@pytest.fixture(scope="module")
def exact(corpus: Corpus) -> SearchIndex:
    return SearchIndex(opened(corpus.folder, corpus))


def original(row_id: str) -> int:
    return int(row_id.removeprefix("node-"))


def test_the_builder_writes_each_partition_as_a_slice_of_every_file(corpus: Corpus) -> None:
    artifact = opened(corpus.folder, corpus)
    head = artifact.head
    assert head is not None
    assert head.layout == ivf.CONTIGUOUS
    starts = head.starts
    assert starts is not None
    assert starts[0] == 0
    assert starts[-1] == N
    data = (corpus.folder / ivf.PARTS).read_bytes()
    for p in range(head.nlist):
        start, end = head.span(p)
        part = ivf.Partition.parse(
            data[start:end], dim=head.dim, expected_sha256=head.sha256[p], name=str(p)
        )
        assert part.rows.tolist() == list(range(starts[p], starts[p + 1]))
    # Row i of every file is one chunk: its vector, its record, its content hash, its columns.
    written = records(N)
    where = FilterGroup((Condition("k", "==", 3),))
    admitted = SearchIndex(artifact).mask(where)
    for row in range(N):
        record = artifact.record(row)
        source = original(record.id)
        assert record == written[source]
        np.testing.assert_array_equal(artifact.vectors[row], corpus.vectors[source])
        assert artifact.hashes[row].tobytes() == content_hash("test:model", record.text)
        assert admitted[row] == (record.metadata["k"] == 3)
    # Every partition's rows are nearer to its centroid than to any other.
    nearest = (np.asarray(artifact.vectors) @ head.centroids.T).argmax(axis=1)
    assert (np.diff(nearest) >= 0).all()


def test_probing_every_partition_is_the_exact_search(corpus: Corpus, exact: SearchIndex) -> None:
    index = SearchIndex(opened(corpus.folder, corpus), probes=PARTITIONS)
    assert index.mode == "partitions"
    for query in corpus.queries:
        assert index.search(query, K) == exact.search(query, K)
    index.close()


def test_the_nearest_partitions_give_the_exact_answers_within_the_recall_claimed(
    corpus: Corpus, exact: SearchIndex
) -> None:
    index = SearchIndex(opened(corpus.folder, corpus), probes=6)
    found = 0
    for query in corpus.queries:
        hits, truth = index.search(query, K), exact.search(query, K)
        same = {hit.row: hit for hit in truth}
        found += sum(hit.row in same for hit in hits)
        for hit in hits:  # a hit the exact search also found is that hit: score and record
            if hit.row in same:
                assert hit == same[hit.row]
        if {hit.row for hit in hits} == set(same):
            assert hits == truth
    assert found / (K * len(corpus.queries)) >= 0.9
    index.close()


def test_filtered_and_id_restricted_queries_stay_exact(corpus: Corpus, exact: SearchIndex) -> None:
    index = SearchIndex(opened(corpus.folder, corpus), probes=1)
    wide = FilterGroup((Condition("k", "!=", 3),))  # most rows: scored in place
    rare = FilterGroup((Condition("rare", "==", True),))  # few rows: gathered
    ids = {f"node-{i:05d}" for i in range(0, N, 7)}
    for query in corpus.queries[:10]:
        assert index.search(query, K, wide) == exact.search(query, K, wide)
        assert index.search(query, K, rare) == exact.search(query, K, rare)
        assert index.search(query, K, node_ids=ids) == exact.search(query, K, node_ids=ids)
    index.close()


def test_concurrent_queries_each_get_their_own_answer(corpus: Corpus, exact: SearchIndex) -> None:
    index = SearchIndex(opened(corpus.folder, corpus), probes=PARTITIONS)
    answers: dict[int, object] = {}
    barrier = threading.Barrier(8)

    def ask(i: int) -> None:
        barrier.wait()
        answers[i] = index.search(corpus.queries[i], K)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    index.close()
    assert all(answers[i] == exact.search(corpus.queries[i], K) for i in range(8))


def test_a_head_without_the_layout_is_searched_exactly(corpus: Corpus, tmp_path: Path) -> None:
    """An artifact written before rows were laid out by partition (layout 0): partitions are not
    slices, so every row is scored."""
    shutil.copytree(corpus.folder, tmp_path / "old")
    head = bytearray((tmp_path / "old" / ivf.HEAD).read_bytes())
    head[_LAYOUT_AT : _LAYOUT_AT + 4] = bytes(4)
    (tmp_path / "old" / ivf.HEAD).write_bytes(bytes(head))
    artifact = opened(tmp_path / "old", corpus)
    assert artifact.head is not None
    assert artifact.head.starts is None
    index = SearchIndex(artifact, probes=4)
    assert index.mode == "exact"
    assert index.search(corpus.queries[0], K) == SearchIndex(opened(corpus.folder, corpus)).search(
        corpus.queries[0], K
    )


def test_a_head_that_does_not_fit_its_partitions_is_refused(corpus: Corpus) -> None:
    data = (corpus.folder / ivf.HEAD).read_bytes()
    dim = corpus.vectors.shape[1]
    bounds = 64 + 4 * PARTITIONS * dim + 8  # the end of partition 0
    cut = bytearray(data)
    cut[bounds : bounds + 8] = (int.from_bytes(data[bounds : bounds + 8], "little") + 7).to_bytes(
        8, "little"
    )
    with pytest.raises(IntegrityError, match="not whole rows"):
        ivf.Head.parse(bytes(cut), rows=N, dim=dim)
    more = bytearray(data)  # claims 5 rows more than its partitions hold
    more[20:28] = (N + 5).to_bytes(8, "little")
    with pytest.raises(IntegrityError, match=f"partitions hold {N} rows, not {N + 5}"):
        ivf.Head.parse(bytes(more), rows=N + 5, dim=dim)


def test_auto_scores_partitions_from_the_threshold_up() -> None:
    assert warm_probes(PARTITIONS_FROM_CHUNKS - 1, "auto", 64) is None
    assert warm_probes(PARTITIONS_FROM_CHUNKS, "auto", 64) == 64
    assert warm_probes(10, "partitions", 8) == 8
    assert warm_probes(10**7, "exact", 8) is None


def test_the_function_serves_partitions_once_in_memory(corpus: Corpus, tmp_path: Path) -> None:
    """From the store, on demand first; the index that arrives scores its nearest partitions."""
    backend = ArtifactBackend(
        lambda: Remote(corpus.store), tmp_path, warm_search="partitions", warm_probes=PARTITIONS
    )
    searcher = backend.open(corpus.manifest, {})
    assert isinstance(searcher, TieredSearcher)
    assert searcher.wait_warm(30)
    assert searcher.search(corpus.queries[0], K) == SearchIndex(
        opened(corpus.folder, corpus)
    ).search(corpus.queries[0], K)
    assert searcher.mode == "partitions"
    backend.retire(searcher)
    exact = ArtifactBackend(lambda: corpus.store, tmp_path / "local").open(corpus.manifest, {})
    assert isinstance(exact, SearchIndex)
    assert exact.mode == "exact"  # auto, below the threshold


def test_downloaded_vectors_are_mapped_at_once_and_read_only(corpus: Corpus) -> None:
    """A downloaded index maps its vectors with their pages filled in (MAP_POPULATE): the same
    values, still read-only."""
    paths = {name: corpus.folder / name for name in corpus.manifest.files}
    populated = Artifact(corpus.manifest, paths, populate=True)
    lazy = Artifact(corpus.manifest, paths)
    np.testing.assert_array_equal(populated.vectors, lazy.vectors)
    assert not populated.vectors.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        populated.vectors[0, 0] = 1.0
