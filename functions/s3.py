"""The S3 store (AWS S3, MinIO, any S3-compatible server): the only module that touches
botocore and boto3 (botocore's client; boto3's transfer manager for uploads).

Conditional writes use ``PutObject`` with ``IfMatch=<etag>`` or ``IfNoneMatch="*"``; a 412 or 409
answer is a lost race. Downloads hash each block as it arrives. With ``download_concurrency`` > 1
a file is fetched as parallel ranged GETs, one block each, written in place with ``pwrite`` —
what real S3 needs, since one connection carries about 100 MB/s; with 1 it is one streaming GET
(best where one stream is fast and ranges are not, e.g. an S3 double on loopback).

Over 400 lines: every S3 error meaning (lost race, missing bucket, throttling, wrong region) is
translated here, next to the calls that meet it, so no other module needs botocore's errors.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError, IntegrityError, ObjectNotFound, StoreError, WriteConflict
from .storage import Fetched, ObjectInfo, Versioned

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectIdentifierTypeDef

__all__ = ["S3Store"]

_IN_FLIGHT = 4
_STREAM_CHUNK = 1024 * 1024
_RANGE_ATTEMPTS = 4
_RANGE_BACKOFF_S = 0.05
_PRESIGNED_LIFE_S = 900  # a presigned URL's validity
_PRESIGNED_REUSE_S = 300  # how long one is used: well inside its life, and short-lived credentials'


def _read_block(body: StreamingBody, block_size: int) -> bytes:
    """Read one whole block (a short read is not the end), or b"" at the end."""
    block = body.read(block_size)
    while block and len(block) < block_size and (more := body.read(block_size - len(block))):
        block += more
    return block


def _write(fd: int, data: bytes, offset: int) -> None:
    view, written = memoryview(data), 0
    while written < len(data):  # pwrite may write less than asked
        written += os.pwrite(fd, view[written:], offset + written)


def _hash_and_write(fd: int, data: bytes, offset: int) -> str:
    _write(fd, data, offset)
    return hashlib.sha256(data).hexdigest()


def _client(config: Any) -> S3Client:
    """An S3 client from botocore's session, as boto3 makes it (the standard ``AWS_*``
    configuration and credential chain) without boto3's own session: 0.1 s less of a cold
    start. boto3 is imported for uploads only (its transfer manager).

    The region: ``AWS_REGION`` where it is set (what Lambda, EKS Pod Identity and the other
    AWS SDKs use, and what the README and the ConfigMap set), else botocore's own chain
    (``AWS_DEFAULT_REGION``, the config file). botocore alone ignores ``AWS_REGION``: its
    client would sign for us-east-1, and the presigned URLs of ranged reads to a bucket in
    another region would be refused."""
    import botocore.session

    session = botocore.session.get_session()
    client: S3Client = session.create_client(  # type: ignore[assignment]
        "s3", region_name=os.environ.get("AWS_REGION") or None, config=config
    )
    return client


_THROTTLING = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})
_PREFLIGHT = ".knative-rag-preflight"  # never written: the key of the write check


class S3Store:
    """A store under an S3 prefix, through boto3 and the standard ``AWS_*`` configuration."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        client: S3Client | None = None,
        download_concurrency: int = 8,
        multipart_threshold: int = 64 * 1024 * 1024,
    ) -> None:
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        self.uri = f"s3://{bucket}/{prefix}".rstrip("/")
        self.download_concurrency = max(1, download_concurrency)
        # botocore's default is 'legacy' retries with 60 s timeouts: fail faster, retry smarter.
        config = Config(
            retries={"mode": "standard", "max_attempts": 4},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=max(64, 4 * self.download_concurrency),  # on-demand reads: 64
        )
        self.client: S3Client = client or _client(config)
        self._multipart_threshold = multipart_threshold
        self._presigned_urls: dict[str, tuple[str, float]] = {}
        self._presigned_lock = threading.Lock()

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _translated(self, key: str) -> Iterator[None]:
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            PartialCredentialsError,
        )

        try:
            yield
        except ClientError as exc:
            raise self._refusal(exc, key) from exc
        except BotoCoreError as exc:
            transient = not isinstance(exc, NoCredentialsError | PartialCredentialsError)
            raise StoreError(
                f"{self.uri}/{key}: {type(exc).__name__}: {exc}", transient=transient
            ) from exc
        except Exception as exc:
            if not type(exc).__module__.startswith("boto3."):
                raise
            # The transfer manager's own (S3UploadFailedError ...), from uploads only: boto3 is
            # imported only there.
            if isinstance(exc.__context__, ClientError):
                raise self._refusal(exc.__context__, key) from exc
            raise StoreError(f"{self.uri}/{key}: {type(exc).__name__}: {exc}") from exc

    def _refusal(self, exc: ClientError, key: str) -> StoreError | IntegrityError:
        """The error an S3 error answer means here."""
        error = exc.response.get("Error", {})
        code = error.get("Code", "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        where = f"{self.uri}/{key}"
        if code == "NoSuchBucket":  # before 404: a missing bucket is not a missing key
            return StoreError(f"bucket {self.bucket!r} does not exist ({where})", transient=False)
        if code in ("NoSuchKey", "404", "NotFound") or status == 404:
            return ObjectNotFound(f"{where} does not exist")
        if code == "InvalidRange" or status == 416:
            return IntegrityError(f"{key} is shorter than its manifest says")
        if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
            return WriteConflict(f"{where}: conditional write refused ({code or status})")
        # 4xx other than throttling will not pass by itself: credentials, permissions. 5xx,
        # throttling and timeouts may.
        transient = (
            not isinstance(status, int) or status >= 500 or status in (408, 429)
        ) or code in _THROTTLING
        return StoreError(
            f"{where}: {code or status}: {error.get('Message', '')}", transient=transient
        )

    def check(self, *, write: bool = False) -> None:
        """The bucket exists and these credentials may read it (and write under the prefix).

        The write check is a ``PutObject`` with ``If-Match`` on a key that never exists: S3
        checks permissions first, then answers 404 (or 412) and writes nothing. A server that
        writes it anyway ignores conditional writes, and channels could not move safely.
        """
        from botocore.exceptions import ClientError

        with self._translated(""):
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:  # HEAD answers carry no error code, only the status
                status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
                if status in (403, 404):
                    raise StoreError(
                        f"bucket {self.bucket!r} does not exist ({self.uri})"
                        if status == 404
                        else f"access to bucket {self.bucket!r} denied ({self.uri}): check "
                        "the credentials and the bucket policy",
                        transient=False,
                    ) from exc
                raise
        if not write:
            return
        try:
            self.put(_PREFLIGHT, b"", if_match='"knative-rag-preflight"')
        except (ObjectNotFound, WriteConflict):
            return  # allowed to write, and nothing was written
        self.delete([_PREFLIGHT])
        raise ConfigurationError(
            f"{self.uri} ignores conditional writes (If-Match): channels cannot move safely "
            "there; use AWS S3, MinIO or another server that supports them"
        )

    def get(self, key: str) -> Versioned:
        """Read a small object with its ETag."""
        with self._translated(key):
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
            return Versioned(response["Body"].read(), response["ETag"])

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """PutObject with S3's conditional-write headers."""
        with self._translated(key):
            if if_match is not None:
                response = self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfMatch=if_match
                )
            elif if_none_match:
                response = self.client.put_object(
                    Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*"
                )
            else:
                response = self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)
        return response["ETag"]

    def upload(self, key: str, path: Path) -> None:
        """Upload a file; large files go up as parallel multipart parts."""
        from boto3.s3.transfer import S3Transfer, TransferConfig

        config = TransferConfig(
            multipart_threshold=self._multipart_threshold,
            multipart_chunksize=self._multipart_threshold,
        )
        with self._translated(key):
            S3Transfer(self.client, config).upload_file(  # type: ignore[arg-type]
                str(path), self.bucket, self._key(key)
            )

    def fetch(self, key: str, dest: Path, *, size: int, block_size: int) -> Fetched:
        """Download to ``dest``, hashing each block; the file appears only when complete."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}")
        try:
            with self._translated(key):
                if self.download_concurrency > 1 and size > block_size:
                    fetched = self._ranged(key, tmp, size, block_size)
                else:
                    fetched = self._streamed(key, tmp, block_size)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
        return Fetched(dest, fetched.size, fetched.blocks)

    def _streamed(self, key: str, tmp: Path, block_size: int) -> Fetched:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        pending: list[Future[str]] = []
        offset = 0
        try:
            # Blocks are hashed and written by two threads while this one reads the next: the
            # stream is not held up by sha256 and the page cache (both release the GIL).
            with ThreadPoolExecutor(2, thread_name_prefix="block") as pool:
                while block := _read_block(body, block_size):
                    pending.append(pool.submit(_hash_and_write, fd, block, offset))
                    offset += len(block)
                    if len(pending) > _IN_FLIGHT:  # bound the memory held by unwritten blocks
                        pending[-_IN_FLIGHT - 1].result()
                blocks = [future.result() for future in pending]
        finally:
            os.close(fd)
        return Fetched(tmp, offset, blocks)

    def _ranged(self, key: str, tmp: Path, size: int, block_size: int) -> Fetched:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        totals: set[str] = set()
        try:
            os.ftruncate(fd, size)

            def block(offset: int) -> tuple[str, int]:
                end = min(offset + block_size, size) - 1
                response = self.client.get_object(
                    Bucket=self.bucket, Key=self._key(key), Range=f"bytes={offset}-{end}"
                )
                totals.add(response.get("ContentRange", "/").rsplit("/", 1)[-1])
                # A megabyte at a time, written and hashed as it arrives: eight blocks of 8 MiB
                # held whole per file would be the largest thing in a cold start's memory.
                body, digest, at = response["Body"], hashlib.sha256(), offset
                while chunk := body.read(_STREAM_CHUNK):
                    _write(fd, chunk, at)
                    digest.update(chunk)
                    at += len(chunk)
                return digest.hexdigest(), at - offset

            with ThreadPoolExecutor(self.download_concurrency, thread_name_prefix="range") as pool:
                parts = list(pool.map(block, range(0, size, block_size)))
        finally:
            os.close(fd)
        if totals != {str(size)}:
            raise IntegrityError(f"{key} is {'/'.join(sorted(totals))} bytes, not {size}")
        return Fetched(tmp, sum(n for _, n in parts), [digest for digest, _ in parts])

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes [start, end) of an object: one ranged GET. A cold query makes dozens at once,
        so they skip botocore's request pipeline (2 ms of CPU each, under the GIL): a presigned
        URL per key, reused for ``_PRESIGNED_REUSE_S``, sent with a ``Range`` header through the
        client's own HTTP session (its TLS, proxy and pool settings): 0.6 ms. A 403 (rotated
        credentials) is retried with a fresh URL, 5xx and dropped connections with backoff."""
        if end <= start:
            return b""
        from botocore.awsrequest import AWSRequest
        from botocore.exceptions import BotoCoreError

        where = f"{self.uri}/{key}"
        for attempt in range(_RANGE_ATTEMPTS):
            last = attempt + 1 == _RANGE_ATTEMPTS
            with self._translated(key):
                url = self._presigned(key, fresh=attempt > 0)
            request = AWSRequest("GET", url, headers={"Range": f"bytes={start}-{end - 1}"})
            try:
                response = self._http_session().send(request.prepare())
            except BotoCoreError as exc:  # refused, reset, timed out
                if last:
                    raise StoreError(f"{where}: {type(exc).__name__}: {exc}") from exc
                time.sleep(_RANGE_BACKOFF_S * 2**attempt)
                continue
            status = response.status_code
            if status in (200, 206):
                data = response.content if status == 206 else response.content[start:end]
                if len(data) != end - start:
                    raise IntegrityError(f"{key}: {len(data)} bytes at {start}, not {end - start}")
                return bytes(data)
            if status == 404:
                raise ObjectNotFound(f"{where} does not exist")
            if status == 416:
                raise IntegrityError(f"{key} is shorter than {end} bytes")
            retry = status == 403 or status >= 500 or status in (408, 429)
            if not retry or last:
                raise StoreError(f"{where}: ranged GET answered {status}", transient=retry)
            if status != 403:
                time.sleep(_RANGE_BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def _presigned(self, key: str, *, fresh: bool) -> str:
        now = time.monotonic()
        with self._presigned_lock:
            known = self._presigned_urls.get(key)
            if known is not None and not fresh and now - known[1] < _PRESIGNED_REUSE_S:
                return known[0]
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": self._key(key)},
            ExpiresIn=_PRESIGNED_LIFE_S,
        )
        with self._presigned_lock:
            self._presigned_urls[key] = (url, now)
        return url

    def _http_session(self) -> Any:
        # The client's own HTTP session: botocore keeps it on the endpoint (stable for years,
        # but not public API).
        return self.client._endpoint.http_session  # type: ignore[attr-defined]

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """List objects under the prefix (all pages)."""
        strip = len(self._key(""))
        found = []
        with self._translated(prefix):
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(item["Key"][strip:], item["Size"], item["LastModified"])
                    )
        return found

    def abort_incomplete(
        self, prefix: str, before: datetime, *, dry_run: bool = False
    ) -> list[str]:
        """Abort multipart uploads under the prefix started before ``before`` (a dead writer's).

        S3 keeps the parts of an upload that was never completed or aborted, invisible to
        listings and billed, until someone aborts it.
        """
        strip = len(self._key(""))
        aborted = []
        with self._translated(prefix):
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for upload in page.get("Uploads", []):
                    if upload["Initiated"] < before:
                        if not dry_run:
                            self.client.abort_multipart_upload(
                                Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                            )
                        aborted.append(upload["Key"][strip:])
        return aborted

    def delete(self, keys: list[str]) -> None:
        """Delete objects in batches of 1000."""
        for start in range(0, len(keys), 1000):
            batch: list[ObjectIdentifierTypeDef] = [
                {"Key": self._key(key)} for key in keys[start : start + 1000]
            ]
            with self._translated(keys[start]):
                self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True}
                )
