"""An S3-compatible HTTP server over a local folder that serves ranged GETs honestly, for
benchmarks only.

moto's S3 server reads the whole object for every ranged GET, so a design built on ranged reads
(a Lance dataset, an index read block by block) looks as slow there as a whole download. This
server seeks instead (``os.pread``) and adds what the network adds: a latency before the first
byte of each request (``latency_s``, default 20 ms) and a bandwidth limit per response stream
(``bandwidth`` bytes/s, default 100e6; concurrent streams are independent, as S3 connections
are). It counts requests, GETs and the object bytes it really sent, per key too; a benchmark
reads them (and changes the knobs) over ``/_bench/stats``, ``/_bench/reset`` and
``/_bench/config``, or through ``RangeS3`` in its own process.

The bucket is a first-level folder under the root; the key is the rest of the path. Files named
``.tmp-*`` or ``.lock`` (``LocalStore``'s) are invisible. Served, path-style (``/bucket/key``):
GetObject and HeadObject (one range: ``bytes=a-b``, ``a-``, ``-n``), PutObject (atomic, with
``If-None-Match: *`` and ``If-Match``), CopyObject (whole objects), DeleteObject, DeleteObjects,
ListObjectsV2 (and V1), HeadBucket, CreateBucket, GetBucketLocation, ListBuckets.

Not simulated: multipart upload (answered 501, so Arrow's output streams and Lance files over
5 MB cannot be written through it: write those into the root folder directly), authentication
(any credentials pass, signatures are not checked), versioning, conditional GETs, conditions
other than ``If-None-Match: *`` and ``If-Match`` on PUT, virtual-hosted-style addressing (clients
must use path style; boto3 does by itself for an endpoint on 127.0.0.1), and
``Transfer-Encoding: chunked`` uploads (S3 refuses them too). Only GetObject bodies are throttled.

Lance (Rust ``object_store``) reads from it with ``storage_options={"aws_endpoint": url,
"allow_http": "true", "aws_region": "us-east-1", "aws_access_key_id": "bench",
"aws_secret_access_key": "bench"}`` (virtual-hosted style is off by default there); boto3 and the
project's ``S3Store`` with the variables of ``aws_env(url)``.

The module is over 400 lines, one file rather than a package, so that a benchmark can run it as a
script (``python bench/range_s3.py --root DIR``) with the standard library alone.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import stat
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.etree import ElementTree
from xml.sax.saxutils import escape

__all__ = ["RangeS3", "aws_env"]

logger = logging.getLogger(__name__)

_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
_CHUNK = 256 * 1024
_REGION = "us-east-1"
_EMPTY_ETAG = '"d41d8cd98f00b204e9800998ecf8427e"'  # S3's ETag of an empty object


def aws_env(url: str) -> dict[str, str]:
    """The ``AWS_*`` variables that point boto3 (in this or a child process) at ``url``."""
    return {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",
        "AWS_DEFAULT_REGION": _REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class _S3Error(Exception):
    """An S3 error answer: status, code and message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def _checked(latency_s: float, bandwidth: float | None) -> tuple[float, float | None]:
    if not (math.isfinite(latency_s) and latency_s >= 0):
        raise ValueError(f"latency_s must be a finite number >= 0, not {latency_s!r}")
    if bandwidth is not None and not (math.isfinite(bandwidth) and bandwidth >= 0):
        raise ValueError(
            f"bandwidth must be bytes/s >= 0 (0 or None: unlimited), not {bandwidth!r}"
        )
    return float(latency_s), float(bandwidth) if bandwidth else None


class _State:
    """The knobs and the counters, shared by the handler threads."""

    def __init__(self, root: Path, latency_s: float, bandwidth: float | None) -> None:
        self.root = root
        self.latency_s, self.bandwidth = _checked(latency_s, bandwidth)
        self.lock = threading.Lock()
        self.put_lock = threading.Lock()  # conditional PUTs check and rename under it
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.requests, self.gets, self.bytes = 0, 0, 0
            self.operations: dict[str, int] = {}
            self.by_key: dict[str, dict[str, int]] = {}

    def count(self, operation: str, key: str | None = None) -> None:
        with self.lock:
            self.requests += 1
            self.operations[operation] = self.operations.get(operation, 0) + 1
            if key is not None:
                self.gets += 1
                self.by_key.setdefault(key, {"gets": 0, "bytes": 0})["gets"] += 1

    def sent(self, key: str, size: int) -> None:
        with self.lock:
            self.bytes += size
            # setdefault: a reset may have come between this stream's count and its bytes
            self.by_key.setdefault(key, {"gets": 0, "bytes": 0})["bytes"] += size

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "gets": self.gets,
                "bytes": self.bytes,
                "requests": self.requests,
                "operations": dict(self.operations),
                "by_key": {key: dict(totals) for key, totals in self.by_key.items()},
                "latency_s": self.latency_s,
                "bandwidth": self.bandwidth,
            }


def _hidden(name: str) -> bool:
    return name.startswith(".tmp-") or name == ".lock"


def _etag(st: os.stat_result) -> str:
    """Stable while the file is unchanged: a digest of its inode, size and mtime."""
    seed = f"{st.st_ino}-{st.st_size}-{st.st_mtime_ns}".encode()
    return f'"{hashlib.sha256(seed).hexdigest()[:32]}"'


def _iso(mtime: float) -> str:
    return datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The (first, last) byte of a one-range header, or None for the whole object (no header, or
    one S3 ignores: malformed, several ranges, last < first); unsatisfiable raises 416."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", header or "")
    if match is None or match[1] == match[2] == "":
        return None
    unsatisfiable = _S3Error(
        416,
        "InvalidRange",
        f"The requested range {header} is not satisfiable (size {size})",
        {"Content-Range": f"bytes */{size}"},
    )
    if match[1] == "":
        if int(match[2]) == 0 or size == 0:
            raise unsatisfiable
        return max(0, size - int(match[2])), size - 1
    first = int(match[1])
    if match[2] and int(match[2]) < first:
        return None
    if first >= size:
        raise unsatisfiable
    return first, min(int(match[2]) if match[2] else size - 1, size - 1)


def _xml(root: str, body: str) -> bytes:
    xmlns = "" if root == "Error" else f' xmlns="{_NS}"'  # S3's errors have no namespace
    return f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}{xmlns}>{body}</{root}>'.encode()


def _element(name: str, value: object) -> str:
    return f"<{name}>{escape(str(value))}</{name}>"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # socketserver's 5 drops bursts of connects: 1 s SYN retries

    def __init__(self, port: int, state: _State) -> None:
        self.state = state
        self.connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            for sock in self.connections:
                with contextlib.suppress(OSError):  # already closed by the client
                    sock.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "RangeS3/1"
    disable_nagle_algorithm = True  # else the body, sent after the headers, waits for an ACK
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s " + format, self.address_string(), *args)

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_PUT = do_DELETE = do_POST = do_GET

    def _dispatch(self) -> None:
        self._pending = int(self.headers.get("Content-Length") or 0)  # request body unread
        self._answered = False
        url = urlsplit(self.path)
        query = {name: values[-1] for name, values in parse_qs(url.query, True).items()}
        bucket, _, key = unquote(url.path).lstrip("/").partition("/")
        try:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                self.close_connection = True  # the body cannot be skipped
                raise _S3Error(501, "NotImplemented", "Transfer-Encoding: chunked")
            if bucket == "_bench":
                self._control(key)
                return
            time.sleep(self.server.state.latency_s)
            self._s3(bucket, key, query)
        except _S3Error as exc:
            if self._answered:  # cannot happen: every error is raised before the status line
                raise
            body = _xml("Error", _element("Code", exc.code) + _element("Message", exc.message))
            self._answer(exc.status, body, {"Content-Type": "application/xml", **exc.headers})
        except Exception:
            if not self._answered:
                self.close_connection = True
                self._answer(500, _xml("Error", _element("Code", "InternalError")), {})
            raise

    def _s3(self, bucket: str, key: str, query: dict[str, str]) -> None:
        method, state = self.command, self.server.state
        if not bucket:
            if method != "GET":
                raise _S3Error(501, "NotImplemented", f"{method} /")
            state.count("ListBuckets")
            self._list_buckets()
        elif not key:
            self._bucket_operation(method, bucket, query)
        elif {"uploads", "uploadId", "partNumber"} & query.keys():
            raise _S3Error(501, "NotImplemented", "multipart upload is not simulated")
        elif method in ("GET", "HEAD"):
            get = method == "GET"
            state.count("GetObject" if get else "HeadObject", f"{bucket}/{key}" if get else None)
            self._get_object(bucket, key, head=method == "HEAD")
        elif method == "PUT":
            state.count("CopyObject" if "x-amz-copy-source" in self.headers else "PutObject")
            self._put_object(bucket, key)
        elif method == "DELETE":
            state.count("DeleteObject")
            self._delete(self._bucket(bucket), [key])
            self._answer(204, b"", {})
        else:
            raise _S3Error(501, "NotImplemented", f"{method} on an object")

    def _bucket_operation(self, method: str, bucket: str, query: dict[str, str]) -> None:
        state = self.server.state
        if method == "PUT":
            state.count("CreateBucket")
            self._read_body()
            try:
                if bucket.startswith((".", "_")):
                    raise ValueError(bucket)
                (state.root / bucket).mkdir(exist_ok=True)
            except (ValueError, OSError) as exc:
                raise _S3Error(400, "InvalidBucketName", bucket) from exc
            self._answer(200, b"", {"Location": f"/{bucket}"})
        elif method == "HEAD":
            state.count("HeadBucket")
            self._bucket(bucket)
            self._answer(200, b"", {"x-amz-bucket-region": _REGION})
        elif method == "GET" and "location" in query:
            state.count("GetBucketLocation")
            self._bucket(bucket)
            self._answer(200, _xml("LocationConstraint", ""), {"Content-Type": "application/xml"})
        elif method == "GET":
            state.count("ListObjectsV2" if query.get("list-type") == "2" else "ListObjects")
            self._list(self._bucket(bucket), bucket, query)
        elif method == "POST" and "delete" in query:
            state.count("DeleteObjects")
            self._delete_objects(self._bucket(bucket))
        else:
            raise _S3Error(501, "NotImplemented", f"{method} on a bucket")

    def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        """A whole small answer (no body to a HEAD); unread request bytes are drained first."""
        while self._pending and self._read(1 << 20):
            pass
        self._answered = True
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read(self, size: int) -> bytes:
        data = self.rfile.read(min(size, self._pending))
        self._pending = self._pending - len(data) if data else 0  # no more at the end
        return data

    def _readline(self) -> bytes:
        line = self.rfile.readline(min(1 << 16, self._pending))
        self._pending = self._pending - len(line) if line else 0
        return line

    def _read_body(self, out: BinaryIO | None = None) -> None:
        """Copy the request body to ``out`` (or discard it), undoing aws-chunked framing."""
        if "aws-chunked" not in self.headers.get("Content-Encoding", ""):
            while self._pending:
                data = self._read(1 << 20)
                if not data:
                    raise _S3Error(400, "IncompleteBody", "the body ended early")
                if out is not None:
                    out.write(data)
            return
        while size := self._chunk_size():
            while size:
                data = self._read(min(size, 1 << 20))
                if not data:
                    raise _S3Error(400, "IncompleteBody", "the body ended early")
                if out is not None:
                    out.write(data)
                size -= len(data)
            self._readline()
        while self._pending and self._readline().strip():  # the trailers (checksums)
            pass

    def _chunk_size(self) -> int:
        try:
            return int(self._readline().split(b";")[0].strip() or b"0", 16)
        except ValueError as exc:
            raise _S3Error(400, "IncompleteBody", "bad aws-chunked framing") from exc

    def _control(self, name: str) -> None:
        state = self.server.state
        if self.command == "POST" and name == "config":
            try:
                body = self.rfile.read(self._pending)
                self._pending = 0
                knobs = json.loads(body or b"{}")
                latency_s = knobs.get("latency_s", state.latency_s)
                bandwidth = knobs.get("bandwidth", state.bandwidth)
                state.latency_s, state.bandwidth = _checked(latency_s, bandwidth)
            except (ValueError, TypeError, AttributeError) as exc:
                raise _S3Error(400, "InvalidArgument", str(exc)) from exc
        elif self.command == "POST" and name == "reset":
            state.reset()
        elif not (self.command == "GET" and name == "stats"):
            raise _S3Error(404, "NoSuchControl", f"{self.command} /_bench/{name}")
        payload = json.dumps(state.snapshot()).encode()
        self._answer(200, payload, {"Content-Type": "application/json"})

    def _bucket(self, bucket: str) -> Path:
        path = self.server.state.root / bucket
        if bucket.startswith((".", "_")) or not path.is_dir():
            raise _S3Error(404, "NoSuchBucket", f"The specified bucket does not exist: {bucket}")
        return path

    def _path(self, bucket: Path, key: str) -> Path | None:
        """The file of ``key``, or None for a key that names no file here."""
        parts = key.split("/")
        if "\0" in key or any(part in ("", ".", "..") for part in parts) or _hidden(parts[-1]):
            return None
        return bucket.joinpath(*parts)

    def _get_object(self, bucket: str, key: str, *, head: bool) -> None:
        path = self._path(self._bucket(bucket), key)
        missing = _S3Error(404, "NoSuchKey", f"The specified key does not exist: {key}")
        if path is None:
            raise missing
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise missing from exc
        try:  # the open file is what is served, even if the key is replaced meanwhile
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise missing
            span = _byte_range(self.headers.get("Range"), st.st_size)
            first, last = span or (0, st.st_size - 1)
            self.send_response(206 if span else 200)
            self._answered = True
            if span:
                self.send_header("Content-Range", f"bytes {first}-{last}/{st.st_size}")
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", _etag(st))
            self.send_header("Last-Modified", formatdate(st.st_mtime, usegmt=True))
            self.end_headers()
            if not head:
                self._stream(fd, first, last - first + 1, f"{bucket}/{key}")
        finally:
            os.close(fd)

    def _stream(self, fd: int, offset: int, length: int, key: str) -> None:
        """Send the body, never ahead of ``bandwidth`` since the first byte; counts what went."""
        state = self.server.state
        bandwidth = state.bandwidth
        chunk = int(min(_CHUNK, max(16 * 1024, bandwidth / 100))) if bandwidth else 4 * _CHUNK
        started, sent = time.monotonic(), 0
        while sent < length:
            data = os.pread(fd, min(chunk, length - sent), offset + sent)
            if not data:  # the file shrank: a short body, the client sees it
                break
            if (
                bandwidth
                and (wait := started + (sent + len(data)) / bandwidth - time.monotonic()) > 0
            ):
                time.sleep(wait)
            # counted before the write: once the client holds the bytes, a stats request it
            # sends next must see them (the write returns after the client may have read them)
            state.sent(key, len(data))
            try:
                self.wfile.write(data)
            except OSError:  # the client went away: what it did not get is not counted
                state.sent(key, -len(data))
                break
            sent += len(data)
        if sent < length:
            self.close_connection = True

    def _put_object(self, bucket: str, key: str) -> None:
        bucket_dir = self._bucket(bucket)
        if key.endswith("/") and self._pending == 0:  # a folder marker (Arrow's CreateDir)
            path = self._path(bucket_dir, key.rstrip("/"))
            if path is not None and not path.is_file():
                path.mkdir(parents=True, exist_ok=True)
                self._answer(200, b"", {"ETag": _EMPTY_ETAG})
                return
        path = self._path(bucket_dir, key)
        if path is None:
            raise _S3Error(400, "InvalidArgument", f"key {key!r} cannot be a file here")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        except OSError as exc:  # a key that is also a folder of other keys
            raise _S3Error(400, "InvalidArgument", f"key {key!r}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as out:
                if source := self.headers.get("x-amz-copy-source"):
                    self._copy(source, out)
                else:
                    self._read_body(out)
            os.chmod(tmp, 0o644)
            with self.server.state.put_lock:
                self._precondition(path)
                try:
                    os.replace(tmp, path)
                except OSError as exc:  # a key that is also a folder of other keys
                    raise _S3Error(400, "InvalidArgument", f"{key!r}: {exc.strerror}") from exc
                etag = _etag(path.stat())
        finally:
            Path(tmp).unlink(missing_ok=True)
        if source:
            result = _element("ETag", etag) + _element("LastModified", _iso(path.stat().st_mtime))
            self._answer(200, _xml("CopyObjectResult", result), {"Content-Type": "application/xml"})
        else:
            self._answer(200, b"", {"ETag": etag})

    def _copy(self, source: str, out: BinaryIO) -> None:
        """CopyObject: the source object's bytes (``x-amz-copy-source: bucket/key``)."""
        bucket, _, key = unquote(source.partition("?")[0]).lstrip("/").partition("/")
        path = self._path(self._bucket(bucket), key)
        try:
            if path is None:
                raise FileNotFoundError(key)
            with path.open("rb") as copied:
                shutil.copyfileobj(copied, out, 1 << 20)
        except OSError as exc:
            raise _S3Error(404, "NoSuchKey", f"The copy source does not exist: {key}") from exc

    def _precondition(self, path: Path) -> None:
        if_match, if_none_match = self.headers.get("If-Match"), self.headers.get("If-None-Match")
        try:
            current: str | None = _etag(path.stat())
        except OSError:
            current = None
        if if_none_match == "*" and current is not None:
            raise _S3Error(412, "PreconditionFailed", "At least one of the pre-conditions failed")
        if if_match is not None and current is None:
            raise _S3Error(404, "NoSuchKey", "The specified key does not exist")
        if if_match is not None and if_match not in ("*", current):
            raise _S3Error(412, "PreconditionFailed", "At least one of the pre-conditions failed")

    def _delete(self, bucket_dir: Path, keys: list[str]) -> None:
        for key in keys:
            path = self._path(bucket_dir, key)
            if path is None or not path.is_file():
                continue
            path.unlink(missing_ok=True)
            for parent in path.parents:  # prune the folders it leaves empty
                if parent == bucket_dir or any(parent.iterdir()):
                    break
                parent.rmdir()

    def _delete_objects(self, bucket_dir: Path) -> None:
        # Only this process's trusted benchmark clients talk to it; expat refuses entity bombs.
        body = self._read_all()
        request = ElementTree.fromstring(body)  # noqa: S314
        keys = [element.text or "" for element in request.iterfind("{*}Object/{*}Key")]
        with self.server.state.put_lock:
            self._delete(bucket_dir, keys)
        quiet = (request.findtext("{*}Quiet") or "").lower() == "true"
        deleted = "" if quiet else "".join(f"<Deleted>{_element('Key', k)}</Deleted>" for k in keys)
        self._answer(200, _xml("DeleteResult", deleted), {"Content-Type": "application/xml"})

    def _read_all(self) -> bytes:
        chunks = []
        while self._pending and (data := self._read(1 << 20)):
            chunks.append(data)
        return b"".join(chunks)

    def _list_buckets(self) -> None:
        root = self.server.state.root
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name[0] not in "._")
        buckets = "".join(
            f"<Bucket>{_element('Name', name)}"
            f"{_element('CreationDate', _iso((root / name).stat().st_mtime))}</Bucket>"
            for name in names
        )
        body = _xml("ListAllMyBucketsResult", f"<Buckets>{buckets}</Buckets>")
        self._answer(200, body, {"Content-Type": "application/xml"})

    def _list(self, bucket_dir: Path, bucket: str, query: dict[str, str]) -> None:
        v2 = query.get("list-type") == "2"
        prefix, delimiter = query.get("prefix", ""), query.get("delimiter", "")
        url = query.get("encoding-type") == "url"
        encode = (lambda text: quote(text, safe="/")) if url else (lambda text: text)
        try:
            max_keys = min(1000, max(0, int(query.get("max-keys", "1000"))))
            token = query.get("continuation-token")
            after = base64.urlsafe_b64decode(token.encode()).decode() if token else ""
        except ValueError as exc:
            raise _S3Error(400, "InvalidArgument", "bad max-keys or continuation-token") from exc
        after = max(after, query.get("start-after" if v2 else "marker", ""))
        found = [entry for entry in _entries(bucket_dir, prefix, delimiter) if entry[0] > after]
        page = found[:max_keys]
        truncated = len(found) > len(page) and bool(page)
        parts = [_element("Name", bucket), _element("Prefix", encode(prefix))]
        parts += [_element("Delimiter", encode(delimiter))] if delimiter else []
        parts += [_element("MaxKeys", max_keys), _element("IsTruncated", str(truncated).lower())]
        parts += [_element("EncodingType", "url")] if url else []
        if v2:
            parts.append(_element("KeyCount", len(page)))
            parts += [_element("ContinuationToken", token)] if token else []
            if "start-after" in query:
                parts.append(_element("StartAfter", encode(query["start-after"])))
            if truncated:
                next_token = base64.urlsafe_b64encode(page[-1][0].encode()).decode()
                parts.append(_element("NextContinuationToken", next_token))
        else:
            parts.append(_element("Marker", encode(query.get("marker", ""))))
            parts += [_element("NextMarker", encode(page[-1][0]))] if truncated else []
        for name, st in page:
            if st is None:
                parts.append(f"<CommonPrefixes>{_element('Prefix', encode(name))}</CommonPrefixes>")
            else:
                fields = [("Key", encode(name)), ("LastModified", _iso(st.st_mtime))]
                fields += [("ETag", _etag(st)), ("Size", st.st_size), ("StorageClass", "STANDARD")]
                parts.append(
                    f"<Contents>{''.join(_element(*field) for field in fields)}</Contents>"
                )
        body = _xml("ListBucketResult", "".join(parts))
        self._answer(200, body, {"Content-Type": "application/xml"})


def _overlaps(folder: str, prefix: str) -> bool:
    """Whether keys under ``folder`` can start with ``prefix``."""
    return folder.startswith(prefix) or prefix.startswith(folder)


def _entries(
    bucket_dir: Path, prefix: str, delimiter: str
) -> list[tuple[str, os.stat_result | None]]:
    """The sorted keys under ``prefix`` with their stat, each run of keys that shares a prefix
    up to ``delimiter`` folded into one (prefix, None) entry."""
    base = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
    if any(part in (".", "..") for part in base.split("/")):
        return []
    keys: list[tuple[str, os.stat_result]] = []
    for folder, dirs, files in os.walk(bucket_dir / base):
        relative = Path(folder).relative_to(bucket_dir).as_posix()
        here = "" if relative == "." else relative + "/"
        dirs[:] = [d for d in dirs if _overlaps(here + d + "/", prefix)]
        for name in files:
            key = here + name
            if key.startswith(prefix) and not _hidden(name):
                try:
                    st = os.stat(os.path.join(folder, name))
                except OSError:  # deleted meanwhile
                    continue
                if stat.S_ISREG(st.st_mode):
                    keys.append((key, st))
    entries: dict[str, os.stat_result | None] = {}
    for key, st in keys:
        cut = key.find(delimiter, len(prefix)) if delimiter else -1
        if cut < 0:
            entries[key] = st
        else:
            entries.setdefault(key[: cut + len(delimiter)], None)
    return sorted(entries.items(), key=lambda entry: entry[0])


class RangeS3:
    """The server over ``root`` on 127.0.0.1 (``port`` 0: a free one), serving in a thread."""

    def __init__(
        self,
        root: Path,
        *,
        latency_s: float = 0.020,
        bandwidth: float | None = 100e6,
        port: int = 0,
    ) -> None:
        root = Path(root).resolve()
        root.mkdir(parents=True, exist_ok=True)
        self._state = _State(root, latency_s, bandwidth)
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> RangeS3:
        """Bind and serve in a daemon thread; ``url`` is set from here on."""
        if self._server is not None:
            raise RuntimeError("RangeS3 is already started")
        self._server = _Server(self._port, self._state)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving and drop open connections (a no-op when not started)."""
        server, thread, self._server, self._thread = self._server, self._thread, None, None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        thread.join(timeout=10)

    def stats(self) -> dict[str, Any]:
        """The counters and knobs, as ``GET /_bench/stats`` answers them."""
        return self._state.snapshot()

    def reset(self) -> None:
        """Zero the counters."""
        self._state.reset()

    def configure(self, *, latency_s: float | None = None, bandwidth: float | None = None) -> None:
        """Change the knobs for the requests that follow; None leaves one as it is (bandwidth 0:
        unlimited)."""
        state = self._state
        latency = state.latency_s if latency_s is None else latency_s
        state.latency_s, state.bandwidth = _checked(
            latency, state.bandwidth if bandwidth is None else bandwidth
        )

    def __enter__(self) -> RangeS3:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve ``--root`` until SIGTERM or SIGINT; the URL is printed on one line first."""
    parser = argparse.ArgumentParser(
        prog="range_s3",
        description="An S3 server over a folder, serving ranged GETs by seeking; for benchmarks.",
    )
    parser.add_argument("--root", type=Path, required=True, help="folder of bucket folders")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="per request (20)")
    parser.add_argument(
        "--bandwidth-mbps",
        type=float,
        default=100.0,
        help="per response stream, in MB/s (10^6 bytes/s; 100); 0: unlimited",
    )
    parser.add_argument("--port", type=int, default=0, help="0: a free port (0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="range_s3: %(levelname)s %(message)s")
    try:
        server = RangeS3(
            args.root,
            latency_s=args.latency_ms / 1000,
            bandwidth=args.bandwidth_mbps * 1e6,
            port=args.port,
        )
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    with server:
        print(server.url, flush=True)
        while not stop.wait(1.0):
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
