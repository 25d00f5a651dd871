from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.artifact import (
    DATA_FILES,
    FORMAT_VERSION,
    MANIFEST,
    ChunkingSpec,
    Counts,
    EmbeddingSpec,
    NodeRecord,
    Probe,
    content_hash,
    parse_manifest,
    write_artifact,
)
from functions.catalog import Pointer, fetch_artifact, index_key, read_manifest
from functions.errors import IntegrityError, UnsupportedFormat
from functions.storage import LocalStore

from .artifacts import random_artifact


def publish_dir(directory: Path, store: LocalStore, channel: str | None = "stable") -> str:
    """Copy an artifact folder into a local store the way the builder lays it out."""
    manifest = parse_manifest((directory / MANIFEST).read_bytes())
    for name in DATA_FILES:
        store.upload(index_key(manifest.index_id, name), directory / name)
    data = (directory / MANIFEST).read_bytes()
    store.put(index_key(manifest.index_id), data)
    if channel:
        pointer = Pointer(
            index_id=manifest.index_id,
            manifest_sha256=hashlib.sha256(data).hexdigest(),
            published_at=datetime.now(UTC),
        )
        store.put(f"channels/{channel}.json", pointer.model_dump_json().encode())
    return manifest.index_id


def test_round_trip(tmp_path: Path) -> None:
    artifact, vectors = random_artifact(tmp_path / "a", n=50, dim=8)
    assert len(artifact) == 50
    np.testing.assert_allclose(artifact.vectors, vectors, rtol=1e-6)
    assert artifact.record(7) == NodeRecord(
        "doc-1#2",
        "doc-1",
        "chunk 7 text ünïcode",
        {"colour": "green", "rank": 7, "even": False, "tags": ["list", "ignored"]},
    )
    assert artifact.columns == {
        "colour": ["red", "green", "blue"],
        "even": [True, False],
        "rank": list(range(10)),
        "tags": [["list", "ignored"]],
    }
    assert artifact.codes.shape == (4, 50)
    assert artifact.ids() == (
        [f"doc-{i // 5}#{i % 5}" for i in range(50)],
        [f"doc-{i // 5}" for i in range(50)],
    )
    assert bytes(artifact.hashes[3]) == content_hash("test:model", "chunk 3 text ünïcode")


def test_index_id_is_timestamped_and_content_addressed(tmp_path: Path) -> None:
    first, _ = random_artifact(tmp_path / "a", seed=1)
    again, _ = random_artifact(tmp_path / "b", seed=1)
    other, _ = random_artifact(tmp_path / "c", seed=2)
    assert first.manifest.index_id == again.manifest.index_id
    assert first.manifest.index_id != other.manifest.index_id
    assert first.manifest.index_id.startswith("20261127-081500-")


def test_fetch_verifies_a_good_artifact(tmp_path: Path) -> None:
    random_artifact(tmp_path / "a")
    store = LocalStore(tmp_path / "store")
    publish_dir(tmp_path / "a", store)
    manifest = read_manifest(store, "stable")
    assert len(fetch_artifact(store, manifest, tmp_path / "cache")) == 500


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-4])


@pytest.mark.parametrize("name", DATA_FILES)
@pytest.mark.parametrize(
    ("damage", "message"),
    [(_corrupt, "sha256"), (_truncate, "truncated"), (Path.unlink, "missing")],
    ids=["corrupt", "truncated", "missing"],
)
def test_damaged_files_are_refused(tmp_path: Path, name: str, damage: object, message: str) -> None:
    random_artifact(tmp_path / "a")
    store = LocalStore(tmp_path / "store")
    index_id = publish_dir(tmp_path / "a", store)
    damage(store.root / index_key(index_id, name))  # type: ignore[operator]
    manifest = read_manifest(store, "stable")
    with pytest.raises(IntegrityError, match=message):
        fetch_artifact(store, manifest, tmp_path / "cache")


@pytest.mark.parametrize(
    "version", [0, 3, "2", True, None], ids=["zero", "future", "string", "bool", "absent"]
)
def test_unknown_format_version_is_refused(tmp_path: Path, version: object) -> None:
    artifact, _ = random_artifact(tmp_path / "a")
    raw = json.loads(artifact.manifest.model_dump_json())
    raw["format_version"] = version
    with pytest.raises(UnsupportedFormat, match="this build reads 1 and 2"):
        parse_manifest(json.dumps(raw).encode())


def test_new_artifacts_are_format_2_which_a_format_1_reader_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Format 2 gives columns.i32's -1 a narrower meaning; a format 1 reader (which accepts
    exactly its own version) must refuse it rather than read list values as absent."""
    artifact, _ = random_artifact(tmp_path / "a")
    assert (artifact.manifest.format_version, FORMAT_VERSION) == (2, 2)
    monkeypatch.setattr("functions.artifact.READABLE_VERSIONS", (1,))
    with pytest.raises(
        UnsupportedFormat, match=r"version 2 is not supported \(this build reads 1\)"
    ):
        parse_manifest((tmp_path / "a" / MANIFEST).read_bytes())


def test_manifest_that_is_not_json_or_misses_fields_is_refused(tmp_path: Path) -> None:
    artifact, _ = random_artifact(tmp_path / "a")
    with pytest.raises(IntegrityError, match="not valid JSON"):
        parse_manifest(b"{truncated")
    raw = json.loads(artifact.manifest.model_dump_json())
    del raw["probe"]
    with pytest.raises(IntegrityError, match="invalid"):
        parse_manifest(json.dumps(raw).encode())
    raw = json.loads(artifact.manifest.model_dump_json())
    del raw["files"]["vectors.f32"]
    with pytest.raises(IntegrityError, match=r"vectors\.f32"):
        parse_manifest(json.dumps(raw).encode())


def test_channel_pointing_at_a_different_manifest_is_refused(tmp_path: Path) -> None:
    random_artifact(tmp_path / "a")
    store = LocalStore(tmp_path / "store")
    index_id = publish_dir(tmp_path / "a", store)
    manifest_path = store.root / index_key(index_id)
    manifest_path.write_bytes(
        manifest_path.read_bytes().replace(
            b'"builder_version": "test"', b'"builder_version": "evil"'
        )
    )
    with pytest.raises(IntegrityError, match="does not match channel"):
        read_manifest(store, "stable")


def test_manifest_under_the_wrong_id_is_refused(tmp_path: Path) -> None:
    random_artifact(tmp_path / "a")
    store = LocalStore(tmp_path / "store")
    index_id = publish_dir(tmp_path / "a", store, channel=None)
    other = "20200101-000000-00000000"
    store.put(index_key(other), (store.root / index_key(index_id)).read_bytes())
    with pytest.raises(IntegrityError, match="names index"):
        read_manifest(store, other)


_text = st.text(min_size=1, max_size=200)
_scalar = st.one_of(
    st.none(),
    st.text(max_size=20),
    st.integers(-5, 5),
    st.booleans(),
    st.floats(-2, 2),
    st.sampled_from([0.0, -0.0, 1.0, 1, True]),
)
_meta = st.dictionaries(
    st.sampled_from(["a", "b", "c", "ü"]),
    st.one_of(
        _scalar,
        st.lists(_scalar, max_size=2),
        st.dictionaries(st.text(max_size=3), _scalar, max_size=2),
    ),
    max_size=4,
)


def _typed(value: object) -> str:
    return json.dumps(value, sort_keys=True)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(records=st.lists(st.tuples(_text, _meta), min_size=1, max_size=20), dim=st.integers(1, 16))
def test_any_records_round_trip(
    tmp_path_factory: pytest.TempPathFactory, records: list[tuple[str, dict[str, object]]], dim: int
) -> None:
    directory = tmp_path_factory.mktemp("h")
    rows = [NodeRecord(f"id-{i}", f"doc-{i}", text, meta) for i, (text, meta) in enumerate(records)]
    vectors = np.ones((len(rows), dim), dtype=np.float32) / np.sqrt(dim)
    manifest = write_artifact(
        directory,
        vectors=vectors,
        records=rows,
        hashes=[content_hash("m", r.text) for r in rows],
        embedding=EmbeddingSpec(provider="p", model="m", dim=dim),
        chunking=ChunkingSpec(chunk_size=64, chunk_overlap=0),
        counts=Counts(documents=len(rows), chunks=len(rows), embedded=len(rows), reused=0),
        probe=Probe(text="p", vector=[0.0] * dim),
        created_at=datetime(2026, 1, 1, tzinfo=UTC),
        builder_version="t",
    )
    store = LocalStore(directory.parent / f"{directory.name}-store")
    publish_dir(directory, store)
    artifact = fetch_artifact(store, read_manifest(store, "stable"), directory / "cache")
    assert artifact.manifest == manifest
    assert [artifact.record(i) for i in range(len(rows))] == rows
    assert artifact.ids() == ([r.id for r in rows], [r.doc_id for r in rows])
    # The columns give back every value, type and all (True, 1 and 1.0 stay apart), and -1 only
    # where the key is missing.
    for k, key in enumerate(artifact.columns):
        assert [
            None if code == -1 else _typed(artifact.columns[key][code])
            for code in artifact.codes[k].tolist()
        ] == [_typed(r.metadata[key]) if key in r.metadata else None for r in rows]
    assert set(artifact.columns) == {key for r in rows for key in r.metadata}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    name=st.sampled_from(DATA_FILES),
    where=st.floats(min_value=0, max_value=1, exclude_max=True),
    change=st.sampled_from(["flip", "truncate", "append"]),
)
def test_any_corruption_of_any_file_is_detected(
    tmp_path_factory: pytest.TempPathFactory, name: str, where: float, change: str
) -> None:
    directory = tmp_path_factory.mktemp("c")
    random_artifact(directory / "a", n=40, dim=8)
    store = LocalStore(directory / "store")
    index_id = publish_dir(directory / "a", store)
    path = store.root / index_key(index_id, name)
    data = bytearray(path.read_bytes())
    at = int(where * len(data))
    if change == "flip" and data:
        data[at] ^= 0x01
    elif change == "truncate":
        del data[at:]
    else:
        data += b"\\0"
    if bytes(data) == path.read_bytes():
        return  # an empty file cannot be flipped; truncating it at 0 changes nothing
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        fetch_artifact(store, read_manifest(store, "stable"), directory / "cache")
