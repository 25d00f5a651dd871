from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest

from functions.catalog import fetch_artifact, index_key, read_channel, read_manifest
from functions.embeddings import OllamaEmbedder
from functions.errors import ArtifactError, ObjectNotFound, WriteConflict
from functions.s3 import S3Store
from functions.storage import LocalStore, Store, open_store
from index_builder.build import build_artifact
from index_builder.job import run_build
from index_builder.publish import (
    Collected,
    catalog,
    collect_garbage,
    promote,
    publish,
    upload_index,
)
from index_builder.sources import load_documents

from .conftest import Ollama, write_corpus


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_uri"))


def built(
    tmp_path: Path, ollama: Ollama, name: str, documents: int = 2, *, out: str = "", now=None
):
    source = write_corpus(tmp_path / f"src-{name}", documents=documents)
    (source / "unique.md").write_text(f"# {name}\n\nA document only build {name} has.\n")
    embedder = OllamaEmbedder("nomic-embed-text", ollama.url)
    return build_artifact(
        load_documents(str(source)),
        embedder,
        tmp_path / f"out-{out or name}",
        chunk_size=64,
        chunk_overlap=8,
        now=now,
    )


def test_racing_publishers_one_wins_the_other_is_told(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    first, second = built(tmp_path, ollama, "a"), built(tmp_path, ollama, "b")
    barrier = threading.Barrier(2)
    outcome: dict[str, str] = {}

    def run(report) -> None:  # both builds started when the channel did not exist yet
        barrier.wait()
        try:
            publish(store, report.directory, report.manifest, channel="stable", expected_etag=None)
            outcome[report.manifest.index_id] = "won"
        except WriteConflict:
            outcome[report.manifest.index_id] = "lost"

    threads = [threading.Thread(target=run, args=(r,)) for r in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcome.values()) == ["lost", "won"]
    winner = next(i for i, o in outcome.items() if o == "won")
    assert read_channel(store, "stable")[0].index_id == winner
    # The loser's index is complete in the store (only its pointer move lost): promotable.
    loser = next(i for i, o in outcome.items() if o == "lost")
    assert read_manifest(store, loser).index_id == loser


def test_publish_against_a_stale_etag_is_refused(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    a, b, c = (
        built(tmp_path, ollama, "a"),
        built(tmp_path, ollama, "b"),
        built(tmp_path, ollama, "c"),
    )
    publish(store, a.directory, a.manifest, channel="stable", expected_etag=None)
    _, etag = read_channel(store, "stable")
    publish(store, b.directory, b.manifest, channel="stable", expected_etag=etag)
    with pytest.raises(WriteConflict):
        publish(store, c.directory, c.manifest, channel="stable", expected_etag=etag)
    assert read_channel(store, "stable")[0].index_id == b.manifest.index_id


def test_index_ids_are_the_build_time_and_a_hash_of_the_content(
    tmp_path: Path, ollama: Ollama
) -> None:
    source = write_corpus(tmp_path / "docs", documents=2)
    embedder = OllamaEmbedder("nomic-embed-text", ollama.url)

    def build(n: int, minute: int) -> str:
        return build_artifact(
            load_documents(str(source)),
            embedder,
            tmp_path / f"out-{n}",
            chunk_size=64,
            chunk_overlap=8,
            now=datetime(2026, 12, 2, 6, minute, tzinfo=UTC),
        ).manifest.index_id

    same = [build(n, minute) for n, minute in enumerate((0, 1, 2))]
    assert [i.split("-")[1] for i in same] == ["060000", "060100", "060200"]
    assert len({i.split("-")[2] for i in same}) == 1  # identical documents: the same hash
    (source / "doc-1.md").write_text("# Changed\n\nOne document changed.\n")
    assert build(3, 0).split("-")[2] != same[0].split("-")[2]


def test_publishing_the_same_index_again_keeps_the_one_published(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    a = built(tmp_path, ollama, "a")
    first = upload_index(store, a.directory, a.manifest)
    # The same documents built again in the same second: the same id.
    again = built(
        tmp_path, ollama, "a", out="again", now=a.manifest.created_at.replace(microsecond=0)
    )
    assert again.manifest.index_id == a.manifest.index_id
    assert (again.directory / "manifest.json").read_bytes() != first  # its own build time
    published = publish(store, again.directory, again.manifest, channel="x", expected_etag=None)
    assert published == a.manifest
    assert read_channel(store, "x")[0].manifest_sha256 == hashlib.sha256(first).hexdigest()
    assert read_manifest(store, "x") == a.manifest


def test_an_index_id_holding_other_files_is_never_overwritten(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    a, b = built(tmp_path, ollama, "a"), built(tmp_path, ollama, "b")
    forged = b.manifest.model_copy(update={"index_id": a.manifest.index_id})
    store.put(index_key(a.manifest.index_id), forged.model_dump_json().encode())
    with pytest.raises(WriteConflict, match="exists with other content"):
        upload_index(store, a.directory, a.manifest)
    assert [o.key for o in store.list_objects("indexes/")] == [index_key(a.manifest.index_id)]


def test_a_channel_is_created_only_when_asked(store: Store, tmp_path: Path, ollama: Ollama) -> None:
    a = built(tmp_path, ollama, "a")
    upload_index(store, a.directory, a.manifest)
    promote(store, "stable", a.manifest.index_id, create_channel=True)
    with pytest.raises(ObjectNotFound) as caught:
        promote(store, "stabel", a.manifest.index_id)
    assert caught.value.message == (
        "channel 'stabel' does not exist (did you mean 'stable'? channels: stable); "
        "to create it, pass --create-channel"
    )
    with pytest.raises(WriteConflict, match="does not exist, so it does not point at"):
        promote(store, "canary", a.manifest.index_id, expected_index=a.manifest.index_id)
    assert sorted(catalog(store)[1]) == ["stable"]


def test_promote_moves_a_channel_and_checks_expectations(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    a, b = built(tmp_path, ollama, "a"), built(tmp_path, ollama, "b")
    publish(store, a.directory, a.manifest, channel="stable", expected_etag=None)
    publish(store, b.directory, b.manifest, channel=None, expected_etag=None)
    with pytest.raises(WriteConflict, match="not 20"):
        promote(store, "stable", b.manifest.index_id, expected_index=b.manifest.index_id)
    pointer = promote(store, "stable", b.manifest.index_id, expected_index=a.manifest.index_id)
    assert read_channel(store, "stable")[0] == pointer
    assert (
        promote(store, "canary", a.manifest.index_id, create_channel=True).index_id
        == a.manifest.index_id
    )
    with pytest.raises(ObjectNotFound):
        promote(store, "stable", "20990101-000000-deadbeef")


def test_promote_refuses_an_incomplete_index(store: Store, tmp_path: Path, ollama: Ollama) -> None:
    a = built(tmp_path, ollama, "a")
    store.upload(index_key(a.manifest.index_id, "vectors.f32"), a.directory / "vectors.f32")
    with pytest.raises(ObjectNotFound):
        promote(store, "stable", a.manifest.index_id)
    store.put(index_key(a.manifest.index_id), b"{}")
    with pytest.raises(ArtifactError):
        promote(store, "stable", a.manifest.index_id)


def test_catalog_and_gc_keep_what_channels_point_to(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    reports = [built(tmp_path, ollama, name) for name in "abcde"]
    ids = sorted(r.manifest.index_id for r in reports)
    for report in sorted(reports, key=lambda r: r.manifest.index_id):
        publish(store, report.directory, report.manifest, channel=None, expected_etag=None)
    promote(store, "stable", ids[0], create_channel=True)
    # A build that died mid-upload: data files but no manifest.
    store.upload(
        "indexes/20200101-000000-0badc0de/vectors.f32", reports[0].directory / "vectors.f32"
    )

    indexes, channels = catalog(store)
    assert [i.index_id for i in indexes] == sorted([*ids, "20200101-000000-0badc0de"], reverse=True)
    assert [i.complete for i in indexes] == [True] * 5 + [False]
    assert {name: p.index_id for name, p in channels.items()} == {"stable": ids[0]}

    assert collect_garbage(store, keep=2, incomplete_after=timedelta(hours=1)) == Collected(
        [ids[2], ids[1]], []
    )
    assert collect_garbage(store, keep=2, incomplete_after=timedelta(0), dry_run=True).indexes == [
        "20200101-000000-0badc0de"
    ]
    collect_garbage(store, keep=2, incomplete_after=timedelta(0))
    assert [i.index_id for i in catalog(store)[0]] == [ids[4], ids[3], ids[0]]
    assert read_manifest(store, "stable").index_id == ids[0]


def test_gc_discards_uploads_a_dead_builder_left(store: Store, tmp_path: Path) -> None:
    key = "indexes/20200101-000000-0badc0de/vectors.f32"
    if isinstance(store, S3Store):  # an upload started and never completed nor aborted
        client = boto3.client("s3")
        upload = client.create_multipart_upload(Bucket=store.bucket, Key=store._key(key))
        client.upload_part(
            Bucket=store.bucket,
            Key=store._key(key),
            UploadId=upload["UploadId"],
            PartNumber=1,
            Body=b"x" * 1024,
        )
    else:  # the temporary file a copy was going into
        assert isinstance(store, LocalStore)
        partial = store.root / "indexes/20200101-000000-0badc0de/.tmp-abc123"
        partial.parent.mkdir(parents=True)
        partial.write_bytes(b"x" * 1024)
        key = "indexes/20200101-000000-0badc0de/.tmp-abc123"
    assert catalog(store)[0] == []  # invisible to listings

    # A build uploading right now is left alone. (moto dates every multipart upload 2010-11-10,
    # so only the local store can show it; S3 and MinIO report when the upload began.)
    if isinstance(store, LocalStore):
        assert collect_garbage(store, keep=1, incomplete_after=timedelta(hours=1)).uploads == []
    assert collect_garbage(store, keep=1, incomplete_after=timedelta(0), dry_run=True) == Collected(
        [], [key]
    )
    assert collect_garbage(store, keep=1, incomplete_after=timedelta(0)) == Collected([], [key])
    assert collect_garbage(store, keep=1, incomplete_after=timedelta(0)) == Collected([], [])
    if isinstance(store, S3Store):
        assert boto3.client("s3").list_multipart_uploads(Bucket=store.bucket).get("Uploads") in (
            None,
            [],
        )
    else:
        assert not (store.root / "indexes").exists()


def test_racing_promoters_form_one_chain_of_moves(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    reports = [built(tmp_path, ollama, name) for name in "abcdefg"]
    for report in reports:
        upload_index(store, report.directory, report.manifest)
    first, *others = [report.manifest.index_id for report in reports]
    promote(store, "stable", first, create_channel=True)
    barrier = threading.Barrier(len(others))
    moves: dict[str, str] = {}  # from index -> to index, for every move that succeeded
    conflicts: list[str] = []
    errors: list[BaseException] = []

    def promoter(index_id: str) -> None:
        barrier.wait()
        try:
            while True:  # what a careful promoter does: read, move from what it read, retry
                seen = read_channel(store, "stable")[0].index_id
                try:
                    promote(store, "stable", index_id, expected_index=seen)
                except WriteConflict:
                    conflicts.append(index_id)
                    continue
                assert seen not in moves, f"two moves from {seen}: one was lost"
                moves[seen] = index_id
                return
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=promoter, args=(i,)) for i in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    # Every move started from the pointer the previous one left: one chain through all of them.
    chain = [first]
    while chain[-1] in moves:
        chain.append(moves[chain[-1]])
    assert sorted(chain[1:]) == sorted(others)
    assert read_channel(store, "stable")[0].index_id == chain[-1]
    assert read_manifest(store, "stable").index_id == chain[-1]
    assert conflicts, "the promoters never actually raced"


def test_racing_builders_one_moves_the_channel_the_rest_are_told(
    store: Store, tmp_path: Path, ollama: Ollama
) -> None:
    start = built(tmp_path, ollama, "start")
    publish(store, start.directory, start.manifest, channel="stable", expected_etag=None)
    sources = []
    for n in range(4):
        source = write_corpus(tmp_path / f"src-{n}", documents=2)
        (source / "own.md").write_text(f"# Builder {n}\n\nOnly builder {n} has this.\n")
        sources.append(source)
    barrier = threading.Barrier(len(sources))
    won: list[str] = []
    lost: list[WriteConflict] = []
    errors: list[BaseException] = []

    def builder(source: Path) -> None:
        embedder = OllamaEmbedder("nomic-embed-text", ollama.url)
        barrier.wait()
        try:
            won.append(
                run_build(
                    store, str(source), embedder, channel="stable", chunk_size=64, chunk_overlap=8
                ).index_id
            )
        except WriteConflict as exc:
            lost.append(exc)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=builder, args=(s,)) for s in sources]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(won) >= 1
    assert len(won) + len(lost) == len(sources)  # nobody's outcome went unreported
    current = read_manifest(store, "stable")
    assert current.index_id in won
    fetch_artifact(store, current, tmp_path / "verify")  # complete and intact
    indexes, _ = catalog(store)
    assert len([info for info in indexes if info.complete]) == 1 + len(sources)
