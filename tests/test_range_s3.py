"""bench/range_s3.py over real loopback HTTP: raw ranged GETs, boto3, the project's S3Store, the
counters, the simulation knobs and the CLI."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.exceptions import ClientError

from bench.range_s3 import RangeS3, aws_env
from functions.s3 import S3Store
from functions.storage import block_hashes

ROOT = Path(__file__).resolve().parent.parent
DATA = bytes(range(256)) * 40  # 10240 bytes, each offset's value is known


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[RangeS3]:
    """A server over ``tmp_path`` with bucket ``b`` holding ``data.bin``; boto3 points at it."""
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.bin").write_bytes(DATA)
    with RangeS3(tmp_path, latency_s=0, bandwidth=None) as s3:
        for name, value in aws_env(s3.url).items():
            monkeypatch.setenv(name, value)
        yield s3


def request(
    url: str, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=10000-", 10000, 10239),
        ("bytes=-100", 10140, 10239),
        ("bytes=-99999", 0, 10239),
        ("bytes=10200-99999", 10200, 10239),
    ],
    ids=["closed", "one-byte", "open-ended", "suffix", "suffix-past-start", "end-past-size"],
)
def test_a_range_is_served_exactly(server: RangeS3, header: str, first: int, last: int) -> None:
    status, headers, body = request(server.url, "GET", "/b/data.bin", {"Range": header})
    assert (status, headers["Content-Range"], body) == (
        206,
        f"bytes {first}-{last}/10240",
        DATA[first : last + 1],
    )
    assert headers["Content-Length"] == str(last - first + 1)


def test_a_whole_get_carries_the_object_headers(server: RangeS3) -> None:
    status, headers, body = request(server.url, "GET", "/b/data.bin")
    _, head_headers, head_body = request(server.url, "HEAD", "/b/data.bin")
    assert (status, body, head_body) == (200, DATA, b"")
    assert "Content-Range" not in headers
    assert {
        name: headers[name] for name in ("Content-Length", "Accept-Ranges", "Content-Type")
    } == {
        "Content-Length": "10240",
        "Accept-Ranges": "bytes",
        "Content-Type": "application/octet-stream",
    }
    again = request(server.url, "GET", "/b/data.bin")[1]
    assert headers["ETag"] == head_headers["ETag"] == again["ETag"]  # stable per file
    assert headers["ETag"][0] == headers["ETag"][-1] == '"'
    assert headers["Last-Modified"].endswith(" GMT")


@pytest.mark.parametrize("header", ["bytes=10240-", "bytes=20000-20010", "bytes=-0"])
def test_an_unsatisfiable_range_is_a_416(server: RangeS3, header: str) -> None:
    status, headers, body = request(server.url, "GET", "/b/data.bin", {"Range": header})
    assert (status, headers["Content-Range"]) == (416, "bytes */10240")
    assert b"<Code>InvalidRange</Code>" in body


@pytest.mark.parametrize(
    ("path", "code"),
    [("/b/missing", "NoSuchKey"), ("/nobucket/key", "NoSuchBucket"), ("/b/.lock", "NoSuchKey")],
    ids=["key", "bucket", "hidden"],
)
def test_missing_objects_are_s3_404s(server: RangeS3, tmp_path: Path, path: str, code: str) -> None:
    (tmp_path / "b" / ".lock").write_bytes(b"")
    status, _, body = request(server.url, "GET", path)
    assert (status, f"<Code>{code}</Code>".encode() in body) == (404, True)
    head_status, _, head_body = request(server.url, "HEAD", path)
    assert (head_status, head_body) == (404, b"")


def test_one_connection_carries_many_requests(server: RangeS3) -> None:
    conn = http.client.HTTPConnection(urlsplit(server.url).netloc, timeout=10)
    try:
        answers = []
        for method, path, body in [
            ("GET", "/b/missing", None),
            ("PUT", "/nobucket/key", b"a body the server must skip"),
            ("PUT", "/b/k", b"abc"),
            ("GET", "/b/k", None),
        ]:
            conn.request(method, path, body=body)
            response = conn.getresponse()
            answers.append((response.status, response.read()[:3]))
    finally:
        conn.close()
    assert [status for status, _ in answers] == [404, 404, 200, 200]
    assert answers[-1][1] == b"abc"


def test_boto3_reads_ranges_heads_and_misses(server: RangeS3) -> None:
    s3 = boto3.client("s3")
    response = s3.get_object(Bucket="b", Key="data.bin", Range="bytes=100-1099")
    assert (response["ContentRange"], response["Body"].read()) == (
        "bytes 100-1099/10240",
        DATA[100:1100],
    )
    assert s3.head_object(Bucket="b", Key="data.bin")["ContentLength"] == 10240
    s3.head_bucket(Bucket="b")
    with pytest.raises(s3.exceptions.NoSuchKey):
        s3.get_object(Bucket="b", Key="missing")
    with pytest.raises(s3.exceptions.NoSuchBucket):
        s3.get_object(Bucket="nobucket", Key="missing")
    with pytest.raises(ClientError) as info:
        s3.head_bucket(Bucket="nobucket")
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404


def test_boto3_uses_path_style_on_a_loopback_endpoint(server: RangeS3) -> None:
    urls: list[str] = []
    s3 = boto3.client("s3")
    s3.meta.events.register("before-send", lambda request, **_: urls.append(request.url))
    s3.head_object(Bucket="b", Key="data.bin")
    assert urls == [f"{server.url}/b/data.bin"]


def test_a_conditional_put_refuses_to_overwrite(server: RangeS3, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    etag = s3.put_object(Bucket="b", Key="dir/new", Body=b"first", IfNoneMatch="*")["ETag"]
    with pytest.raises(ClientError) as info:
        s3.put_object(Bucket="b", Key="dir/new", Body=b"second", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert (tmp_path / "b" / "dir" / "new").read_bytes() == b"first"
    assert s3.head_object(Bucket="b", Key="dir/new")["ETag"] == etag
    assert [p.name for p in (tmp_path / "b" / "dir").iterdir()] == ["new"]  # no temp file left
    s3.delete_object(Bucket="b", Key="dir/new")
    assert not (tmp_path / "b" / "dir").exists()


def test_copies_are_whole_and_multipart_uploads_are_refused(server: RangeS3) -> None:
    s3 = boto3.client("s3")
    s3.copy_object(Bucket="b", Key="copy", CopySource={"Bucket": "b", "Key": "data.bin"})
    assert s3.get_object(Bucket="b", Key="copy")["Body"].read() == DATA
    with pytest.raises(ClientError) as info:
        s3.create_multipart_upload(Bucket="b", Key="big")
    assert info.value.response["Error"]["Code"] == "NotImplemented"


def test_listing_groups_by_delimiter_pages_and_hides_temporary_files(
    server: RangeS3, tmp_path: Path
) -> None:
    for key in ["ds/a", "ds/data/1", "ds/data/2", "ds/_versions/1", "ds/z", "other"]:
        (tmp_path / "b" / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "b" / key).write_bytes(key.encode())
    (tmp_path / "b" / "ds" / ".tmp-half").write_bytes(b"")
    s3 = boto3.client("s3")
    top = s3.list_objects_v2(Bucket="b", Prefix="ds/", Delimiter="/")
    assert [item["Key"] for item in top["Contents"]] == ["ds/a", "ds/z"]
    assert top["CommonPrefixes"] == [{"Prefix": "ds/_versions/"}, {"Prefix": "ds/data/"}]
    assert (top["KeyCount"], top["IsTruncated"]) == (4, False)
    assert top["Contents"][0]["Size"] == 4
    assert top["Contents"][0]["LastModified"].tzinfo is not None
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket="b", Prefix="ds/", PaginationConfig={"PageSize": 2}
        )
    )
    assert [[item["Key"] for item in page["Contents"]] for page in pages] == [
        ["ds/_versions/1", "ds/a"],
        ["ds/data/1", "ds/data/2"],
        ["ds/z"],
    ]
    assert [page["IsTruncated"] for page in pages] == [True, True, False]
    delimited = s3.list_objects_v2(Bucket="b", Delimiter="/", MaxKeys=1)
    rest = s3.list_objects_v2(
        Bucket="b", Delimiter="/", ContinuationToken=delimited["NextContinuationToken"]
    )
    assert [item["Key"] for item in delimited["Contents"]] == ["data.bin"]
    assert (rest["CommonPrefixes"], [item["Key"] for item in rest["Contents"]]) == (
        [{"Prefix": "ds/"}],
        ["other"],
    )


@pytest.mark.parametrize("concurrency", [4, 1], ids=["ranged", "streamed"])
def test_s3store_fetches_blocks_and_hashes(
    server: RangeS3, tmp_path: Path, concurrency: int
) -> None:
    source = tmp_path / "b" / "rag" / "three-blocks"
    source.parent.mkdir()
    source.write_bytes(os.urandom(3 * 4096 - 100))
    store = S3Store("b", "rag", download_concurrency=concurrency)
    fetched = store.fetch("three-blocks", tmp_path / "out", size=3 * 4096 - 100, block_size=4096)
    assert fetched.path.read_bytes() == source.read_bytes()
    assert fetched.blocks == block_hashes(source, 4096)
    assert len(fetched.blocks) == 3
    gets = server.stats()["by_key"]["b/rag/three-blocks"]["gets"]
    assert gets == (3 if concurrency > 1 else 1)


def test_s3store_reads_ranges_by_presigned_url(server: RangeS3, tmp_path: Path) -> None:
    from functions.errors import IntegrityError, ObjectNotFound

    source = tmp_path / "b" / "rag" / "parts"
    source.parent.mkdir()
    data = os.urandom(10_000)
    source.write_bytes(data)
    store = S3Store("b", "rag")
    assert store.read_range("parts", 0, 10_000) == data
    assert store.read_range("parts", 1234, 5678) == data[1234:5678]
    assert store.read_range("parts", 9_999, 10_000) == data[-1:]
    assert store.read_range("parts", 7, 7) == b""
    assert server.stats()["by_key"]["b/rag/parts"]["gets"] == 3  # one GET each, none empty
    with pytest.raises(IntegrityError, match="shorter"):
        store.read_range("parts", 10_000, 10_010)
    with pytest.raises(IntegrityError, match="bytes at 9990"):
        store.read_range("parts", 9_990, 10_010)  # S3 answers what there is: 10 bytes
    with pytest.raises(ObjectNotFound):
        store.read_range("absent", 0, 10)


def test_counters_count_the_bytes_sent(server: RangeS3) -> None:
    request(server.url, "GET", "/b/data.bin", {"Range": "bytes=0-999"})
    request(server.url, "HEAD", "/b/data.bin")
    stats = server.stats()
    assert (stats["gets"], stats["bytes"], stats["requests"]) == (1, 1000, 2)
    assert stats["by_key"] == {"b/data.bin": {"gets": 1, "bytes": 1000}}
    assert stats["operations"] == {"GetObject": 1, "HeadObject": 1}
    assert json.loads(request(server.url, "GET", "/_bench/stats")[2]) == stats
    server.reset()
    assert (server.stats()["gets"], server.stats()["bytes"], server.stats()["by_key"]) == (0, 0, {})
    request(server.url, "GET", "/b/data.bin")
    assert json.loads(request(server.url, "POST", "/_bench/reset")[2])["bytes"] == 0


def test_latency_and_bandwidth_slow_each_response(server: RangeS3, tmp_path: Path) -> None:
    server.configure(latency_s=0.05)
    started = time.monotonic()
    request(server.url, "GET", "/b/data.bin", {"Range": "bytes=0-0"})
    assert time.monotonic() - started >= 0.05
    (tmp_path / "b" / "big").write_bytes(bytes(200_000))
    status, _, _ = request(
        server.url, "POST", "/_bench/config", body=b'{"latency_s": 0, "bandwidth": 1e6}'
    )
    assert (status, server.stats()["latency_s"], server.stats()["bandwidth"]) == (200, 0, 1e6)
    started = time.monotonic()
    assert len(request(server.url, "GET", "/b/big")[2]) == 200_000
    assert time.monotonic() - started >= 0.18
    assert request(server.url, "POST", "/_bench/config", body=b'{"bandwidth": -1}')[0] == 400
    with pytest.raises(ValueError, match="latency_s"):
        server.configure(latency_s=-1)


def test_the_cli_prints_its_url_and_serves_until_terminated(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "k").write_bytes(DATA)
    command = [sys.executable, "bench/range_s3.py", "--root", str(tmp_path), "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--latency-ms", "1", "--bandwidth-mbps", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, body = request(url, "GET", "/b/k", {"Range": "bytes=-5"})
        assert (status, body) == (206, DATA[-5:])
        stats = json.loads(request(url, "GET", "/_bench/stats")[2])
        assert (stats["gets"], stats["bytes"], stats["bandwidth"]) == (1, 5, None)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == 0
