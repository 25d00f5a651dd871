from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from functions.errors import (
    ConfigurationError,
    IntegrityError,
    ObjectNotFound,
    StoreError,
    WriteConflict,
)
from functions.s3 import S3Store
from functions.storage import LocalStore, Store, block_hashes, open_store

from .servers import Gate, serve


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(str(tmp_path / "store"))
    return open_store(request.getfixturevalue("s3_uri"))


def test_put_get_round_trip(store: Store) -> None:
    etag = store.put("channels/a.json", b'{"x": 1}')
    got = store.get("channels/a.json")
    assert (got.data, got.etag) == (b'{"x": 1}', etag)


def test_get_missing_is_not_found(store: Store) -> None:
    with pytest.raises(ObjectNotFound):
        store.get("channels/absent.json")


def test_if_none_match_refuses_existing_key(store: Store) -> None:
    store.put("k", b"first", if_none_match=True)
    with pytest.raises(WriteConflict):
        store.put("k", b"second", if_none_match=True)
    assert store.get("k").data == b"first"


def test_stale_etag_is_refused(store: Store) -> None:
    first = store.put("k", b"v1")
    second = store.put("k", b"v2", if_match=first)
    with pytest.raises(WriteConflict):
        store.put("k", b"v3", if_match=first)
    assert store.get("k") == store.get("k")
    assert (store.get("k").data, store.get("k").etag) == (b"v2", second)


@pytest.mark.parametrize("existing", [False, True], ids=["first-publish", "move"])
def test_racing_conditional_writers_exactly_one_wins(store: Store, existing: bool) -> None:
    etag = store.put("channels/stable.json", b"v0") if existing else None
    barrier = threading.Barrier(8)
    outcomes: list[str] = []

    def write(n: int) -> None:
        barrier.wait()
        try:
            if etag is None:
                store.put("channels/stable.json", f"w{n}".encode(), if_none_match=True)
            else:
                store.put("channels/stable.json", f"w{n}".encode(), if_match=etag)
            outcomes.append(f"w{n}")
        except WriteConflict:
            outcomes.append("lost")

    threads = [threading.Thread(target=write, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [o for o in outcomes if o != "lost"]
    assert len(winners) == 1
    assert store.get("channels/stable.json").data == winners[0].encode()


BLOCK = 64 * 1024


def expected_blocks(data: bytes) -> list[str]:
    return [hashlib.sha256(data[i : i + BLOCK]).hexdigest() for i in range(0, len(data), BLOCK)]


@pytest.mark.parametrize(
    "length", [0, 1, BLOCK, 10 * BLOCK + 123], ids=["empty", "one-byte", "one-block", "blocks"]
)
def test_upload_fetch_hashes_blocks_as_they_arrive(
    store: Store, tmp_path: Path, length: int
) -> None:
    source = tmp_path / "blob.bin"
    data = (bytes(range(256)) * (length // 256 + 1))[:length]
    source.write_bytes(data)
    store.upload("indexes/x/blob.bin", source)
    fetched = store.fetch(
        "indexes/x/blob.bin", tmp_path / "cache" / "blob.bin", size=length, block_size=BLOCK
    )
    assert (fetched.size, fetched.blocks) == (length, expected_blocks(data))
    assert fetched.path.read_bytes() == data
    assert block_hashes(source, BLOCK) == expected_blocks(data)


@pytest.mark.parametrize("concurrency", [1, 4], ids=["streamed", "ranged"])
def test_s3_download_strategies_agree(s3_uri: str, tmp_path: Path, concurrency: int) -> None:
    store = S3Store(s3_uri.split("/")[2], "rag", download_concurrency=concurrency)
    data = bytes(range(256)) * 3000 + b"tail"
    (tmp_path / "blob.bin").write_bytes(data)
    store.upload("blob.bin", tmp_path / "blob.bin")
    fetched = store.fetch(
        "blob.bin", tmp_path / "out" / "blob.bin", size=len(data), block_size=BLOCK
    )
    assert (fetched.size, fetched.blocks) == (len(data), expected_blocks(data))
    assert fetched.path.read_bytes() == data
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blob.bin"]


@pytest.mark.parametrize("actual", [BLOCK * 3, BLOCK * 5], ids=["shorter", "longer"])
def test_ranged_download_notices_an_object_of_another_size(
    s3_uri: str, tmp_path: Path, actual: int
) -> None:
    store = S3Store(s3_uri.split("/")[2], "rag", download_concurrency=4)
    store.put("blob.bin", b"x" * actual)
    with pytest.raises(IntegrityError, match=r"bytes, not|shorter"):
        store.fetch("blob.bin", tmp_path / "blob.bin", size=BLOCK * 4, block_size=BLOCK)
    assert list(tmp_path.iterdir()) == []


def test_fetch_missing_is_not_found(store: Store, tmp_path: Path) -> None:
    with pytest.raises(ObjectNotFound):
        store.fetch("indexes/x/none.bin", tmp_path / "none.bin", size=10, block_size=BLOCK)
    assert not (tmp_path / "none.bin").exists()


def test_list_and_delete(store: Store) -> None:
    for key in ["indexes/a/1", "indexes/a/2", "indexes/b/1", "channels/s.json"]:
        store.put(key, key.encode())
    assert sorted(item.key for item in store.list_objects("indexes/")) == [
        "indexes/a/1",
        "indexes/a/2",
        "indexes/b/1",
    ]
    assert [item.size for item in store.list_objects("indexes/a/1")] == [len(b"indexes/a/1")]
    store.delete(["indexes/a/1", "indexes/a/2", "indexes/zzz"])
    assert [item.key for item in store.list_objects("indexes/")] == ["indexes/b/1"]


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://bucket/some/prefix", S3Store),
        ("file:///tmp/store", LocalStore),
        ("relative/store", LocalStore),
    ],
    ids=["s3", "file", "path"],
)
def test_open_store_by_uri(uri: str, kind: type, s3_endpoint: str) -> None:
    assert isinstance(open_store(uri), kind)


@pytest.mark.parametrize(
    "uri", ["s3:///no-bucket", "gs://bucket/x", "http://host/x"], ids=["no-bucket", "gs", "http"]
)
def test_open_store_refuses_bad_uris(uri: str) -> None:
    with pytest.raises(ConfigurationError):
        open_store(uri)


def test_local_keys_cannot_leave_the_store(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError):
        LocalStore(tmp_path / "store").get("../outside")


def test_s3_prefix_is_applied(s3_uri: str) -> None:
    store = open_store(s3_uri)
    store.put("channels/x.json", b"{}")
    bucket = s3_uri.split("/")[2]
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["rag/channels/x.json"]
    assert [item.key for item in store.list_objects("channels/")] == ["channels/x.json"]


@pytest.mark.parametrize(
    "operation",
    ["get", "put", "upload", "fetch", "list", "check", "check-write"],
)
def test_s3_missing_bucket_says_so_whatever_the_operation(
    s3_endpoint: str, tmp_path: Path, operation: str
) -> None:
    store = open_store("s3://no-such-bucket-here/rag")
    (tmp_path / "f").write_bytes(b"data")
    run = {
        "get": lambda: store.get("channels/stable.json"),
        "put": lambda: store.put("channels/stable.json", b"{}", if_none_match=True),
        "upload": lambda: store.upload("indexes/x/vectors.f32", tmp_path / "f"),  # boto3's own
        "fetch": lambda: store.fetch("indexes/x/f", tmp_path / "g", size=4, block_size=BLOCK),
        "list": lambda: store.list_objects("indexes/"),
        "check": lambda: store.check(),
        "check-write": lambda: store.check(write=True),
    }[operation]
    with pytest.raises(StoreError) as caught:
        run()
    assert type(caught.value) is StoreError  # not ObjectNotFound: no key is merely absent
    assert caught.value.message.startswith("bucket 'no-such-bucket-here' does not exist (s3://")
    assert caught.value.transient is False


def test_the_write_check_writes_nothing(store: Store) -> None:
    store.check(write=True)
    store.check()
    assert store.list_objects("") == []


def test_the_read_check_of_a_missing_local_store_fails_and_creates_nothing(tmp_path: Path) -> None:
    store = open_store(str(tmp_path / "typo"))
    with pytest.raises(StoreError, match="does not exist"):
        store.check()
    assert not (tmp_path / "typo").exists()
    store.check(write=True)  # a build may start a new local store
    assert (tmp_path / "typo").is_dir()


def test_a_server_that_ignores_conditional_writes_is_refused(s3_uri: str, s3_endpoint: str) -> None:
    gate = Gate(s3_endpoint, strip={"if-match", "if-none-match"})
    with serve(gate) as url:
        client = boto3.client("s3", endpoint_url=url)
        store = S3Store(s3_uri.split("/")[2], "rag", client=client)
        with pytest.raises(ConfigurationError, match="ignores conditional writes"):
            store.check(write=True)
        assert store.list_objects("") == []  # the probe it did write is gone again


def test_s3_unreachable_endpoint_is_a_store_error() -> None:
    client = boto3.client(
        "s3",
        endpoint_url="http://127.0.0.1:9",
        config=Config(retries={"mode": "standard", "max_attempts": 1}, connect_timeout=1),
    )
    with pytest.raises(StoreError) as caught:
        S3Store("bucket", client=client).get("channels/stable.json")
    assert type(caught.value) is StoreError
    assert "EndpointConnectionError" in caught.value.message


@pytest.mark.parametrize(
    ("variables", "region"),
    [
        ({"AWS_REGION": "eu-west-2"}, "eu-west-2"),
        ({"AWS_REGION": "eu-west-2", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-2"),
        ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
    ],
    ids=["aws-region", "aws-region-first", "botocore-default"],
)
def test_the_client_signs_for_the_configured_region(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], region: str
) -> None:
    """botocore alone ignores AWS_REGION (the variable the README, the ConfigMap, Lambda and
    the other AWS SDKs use): the client signed for us-east-1, and the presigned URLs of the
    on-demand reads were refused by a bucket in another region."""
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    store = S3Store("bucket")
    assert store.client.meta.region_name == region
    url = store.client.generate_presigned_url(
        "get_object", Params={"Bucket": "bucket", "Key": "k"}, ExpiresIn=60
    )
    assert f"%2F{region}%2Fs3%2Faws4_request" in url
