"""The partition index: what lets a cold function answer from object storage before the index
has arrived.

Two optional files of an artifact, written by the builder beside the others and listed in the
manifest like them (a reader that does not know them downloads what it knows and ignores these):

    ivf.head    the coarse index: a 64-byte header, the partition centroids (float32, nlist x
                dim, unit rows), the byte bounds of each partition in ivf.parts (uint64, nlist
                + 1) and the sha256 of each partition (32 bytes each). Verified whole against
                the manifest: it is the one thing read in full.
    ivf.parts   the partitions, one after another. Partition p holds the chunks whose vector is
                nearest to centroid p, in row order, as columns:
                    rows       int32        the chunk's row in vectors.f32 and docstore
                    scales     float32      the row's int8 scale
                    docstore   uint64 x 2   the byte range of its record in docstore.jsonl
                    digests    16 bytes x 2 sha256/128 of its float32 row, and of its record
                    codes      int8 x dim   the vector, quantised: code * scale ~ value
                Each partition is checked against its sha256 in the head as it arrives; each
                row and record read from the other files by range, against its digest here.

The header's layout field says how the artifact's rows are ordered. Layout 1 (``CONTIGUOUS``,
what the builder writes): the builder puts each partition's rows next to each other, partition
after partition, in every row-aligned file (vectors, docstore, columns, hashes), so partition p
is the rows ``starts[p]`` to ``starts[p + 1]`` (``Head.starts``). The in-memory search then
scores a partition by one matrix product on a slice of the mapped vectors, reading only the
probed partitions' pages (``search``). Layout 0: rows in any order (the first writers); readers
that predate the field ignore it, as they ignore the header's padding.

So every byte a cold query uses is verified, through a chain that starts at the manifest: the
manifest's hash of ivf.head, the head's hash of a partition, the partition's hash of a row or
record. The int8 codes only shortlist; hits are ranked on the stored float32 rows, exactly as the
in-memory search ranks them.

The centroids come from spherical k-means on a sample (``kmeans``): ``partitions(n)`` of them,
about the square root of the chunk count, so that the head and one partition stay small at any
size (100k x 768: 316 partitions, a 1 MB head, about 260 kB a partition).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import IntegrityError

__all__ = [
    "CONTIGUOUS",
    "HEAD",
    "MIN_ROWS",
    "PARTS",
    "Head",
    "Partition",
    "assign",
    "digest",
    "kmeans",
    "partitions",
    "plan",
    "write_partitions",
]

HEAD = "ivf.head"
PARTS = "ivf.parts"
MIN_ROWS = 4096  # below this the whole index downloads in a blink: no partition index
_MAGIC = b"knrag-ivf"
_VERSION = 1
_CODEC_INT8 = 1
CONTIGUOUS = 1  # layout: partition p is rows starts[p] to starts[p + 1] of every file
# magic, version, nlist, dim, rows, codec, layout: 64 bytes
_HEADER = struct.Struct("<10sHIIQII30x")
_DIGEST = 16
_ROW_FIXED = 4 + 4 + 16 + 2 * _DIGEST  # bytes a row takes besides its codes
_ASSIGN_BLOCK = 32768


def digest(data: bytes | memoryview) -> bytes:
    """sha256/128 of a row's or a record's bytes, as the partitions keep it."""
    return hashlib.sha256(data).digest()[:_DIGEST]


def partitions(rows: int) -> int:
    """How many partitions an index of ``rows`` chunks gets: 0 below ``MIN_ROWS``, else about
    the square root of the count."""
    return 0 if rows < MIN_ROWS else round(rows**0.5)


@dataclass(frozen=True)
class Head:
    """The coarse index: centroids, partition bounds in ivf.parts and their sha256."""

    rows: int
    dim: int
    centroids: npt.NDArray[np.float32]
    bounds: npt.NDArray[np.uint64]
    sha256: list[bytes]
    layout: int = 0

    @property
    def sizes(self) -> npt.NDArray[np.int64]:
        """Rows in each partition."""
        bounds = self.bounds.astype(np.int64)
        widths: npt.NDArray[np.int64] = bounds[1:] - bounds[:-1]
        return widths // (_ROW_FIXED + self.dim)

    @property
    def starts(self) -> npt.NDArray[np.int64] | None:
        """The first row of each partition, and the row count last (nlist + 1 values), where
        the rows are contiguous by partition (layout 1); else None."""
        if self.layout != CONTIGUOUS:
            return None
        return np.concatenate([[0], np.cumsum(self.sizes)])

    @property
    def nlist(self) -> int:
        """Number of partitions."""
        return int(self.centroids.shape[0])

    @classmethod
    def parse(cls, data: bytes, *, rows: int, dim: int) -> Head:
        """Read a head (already checked against the manifest); refuse one that does not fit
        the index it claims to index."""
        if len(data) < _HEADER.size:
            raise IntegrityError(f"{HEAD}: {len(data)} bytes, shorter than its header")
        magic, version, nlist, head_dim, head_rows, codec, layout = _HEADER.unpack_from(data)
        if magic != _MAGIC.ljust(10, b"\0") or version != _VERSION or codec != _CODEC_INT8:
            raise IntegrityError(f"{HEAD}: not a version {_VERSION} int8 partition index")
        if (head_rows, head_dim) != (rows, dim):
            raise IntegrityError(f"{HEAD}: indexes {head_rows} x {head_dim}, not {rows} x {dim}")
        at = _HEADER.size
        centroids = np.frombuffer(data, "<f4", nlist * dim, at).reshape(nlist, dim)
        at += centroids.nbytes
        bounds = np.frombuffer(data, "<u8", nlist + 1, at)
        at += bounds.nbytes
        if len(data) != at + 32 * nlist:
            raise IntegrityError(f"{HEAD}: {len(data)} bytes, expected {at + 32 * nlist}")
        sha256 = [data[at + 32 * p : at + 32 * (p + 1)] for p in range(nlist)]
        signed = bounds.astype(np.int64)
        widths: npt.NDArray[np.int64] = signed[1:] - signed[:-1]
        if bounds[0] != 0 or np.any(widths < 0) or np.any(widths % (_ROW_FIXED + dim)):
            raise IntegrityError(f"{HEAD}: partition bounds are not whole rows")
        head = cls(rows, dim, centroids, bounds, sha256, layout)
        if layout == CONTIGUOUS and int(head.sizes.sum()) != rows:
            raise IntegrityError(
                f"{HEAD}: partitions hold {int(head.sizes.sum())} rows, not {rows}"
            )
        return head

    def span(self, p: int) -> tuple[int, int]:
        """Partition ``p``'s byte range in ivf.parts: [start, end)."""
        return int(self.bounds[p]), int(self.bounds[p + 1])


@dataclass(frozen=True)
class Partition:
    """One partition's rows, as columns (see the module docstring)."""

    rows: npt.NDArray[np.int32]
    scales: npt.NDArray[np.float32]
    docstore: npt.NDArray[np.uint64]  # (m, 2): start, end
    digests: npt.NDArray[np.uint8]  # (m, 2, 16): the row's, the record's
    codes: npt.NDArray[np.int8]  # (m, dim)

    @classmethod
    def parse(cls, data: bytes, *, dim: int, expected_sha256: bytes, name: str) -> Partition:
        """Read a partition, after checking it against its sha256 in the head."""
        if hashlib.sha256(data).digest() != expected_sha256:
            raise IntegrityError(f"{PARTS}: sha256 of {name} does not match the partition index")
        m, rest = divmod(len(data), _ROW_FIXED + dim)
        if rest:
            raise IntegrityError(f"{PARTS}: {name} is {len(data)} bytes, not whole rows")
        at = 0

        def column(dtype: str, count: int) -> Any:
            nonlocal at
            array = np.frombuffer(data, dtype, count, at)
            at += array.nbytes
            return array

        rows = column("<i4", m)
        scales = column("<f4", m)
        docstore = column("<u8", 2 * m).reshape(m, 2)
        digests = column("u1", 2 * _DIGEST * m).reshape(m, 2, _DIGEST)
        codes = column("i1", m * dim).reshape(m, dim)
        return cls(rows, scales, docstore, digests, codes)

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    @property
    def nbytes(self) -> int:
        """The bytes it holds."""
        return len(self) * _ROW_FIXED + int(self.codes.nbytes)

    def scores(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Approximate cosine similarity of every row with a unit query."""
        scores: npt.NDArray[np.float32] = (self.codes.astype(np.float32) @ query) * self.scales
        return scores


def kmeans(
    vectors: npt.NDArray[np.float32], k: int, *, seed: int = 0, iterations: int = 12
) -> npt.NDArray[np.float32]:
    """Spherical k-means on a sample of at most 64 rows a centroid: ``k`` unit centroids.

    A centroid left without rows is moved to the sample row worst served by its centroid.
    """
    rng = np.random.default_rng(seed)
    n = vectors.shape[0]
    sample = vectors[np.sort(rng.choice(n, min(n, 64 * k), replace=False))].astype(np.float32)
    centroids = sample[rng.choice(sample.shape[0], k, replace=False)].copy()
    for _ in range(iterations):
        nearest, best = _nearest(sample, centroids)
        sums = np.zeros_like(centroids)
        np.add.at(sums, nearest, sample)
        counts = np.bincount(nearest, minlength=k)
        empty = np.flatnonzero(counts == 0)
        if empty.size:
            worst = np.argsort(best)[: empty.size]
            sums[empty] = sample[worst]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    result: npt.NDArray[np.float32] = centroids
    return result


def assign(
    vectors: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> npt.NDArray[np.intp]:
    """The nearest centroid of every row (by dot product), in blocks to bound memory."""
    return _nearest(vectors, centroids)[0]


def _nearest(
    vectors: npt.NDArray[np.float32], centroids: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    nearest = np.empty(vectors.shape[0], dtype=np.intp)
    best = np.empty(vectors.shape[0], dtype=np.float32)
    for start in range(0, vectors.shape[0], _ASSIGN_BLOCK):
        scores = np.asarray(vectors[start : start + _ASSIGN_BLOCK], np.float32) @ centroids.T
        nearest[start : start + scores.shape[0]] = scores.argmax(axis=1)
        best[start : start + scores.shape[0]] = scores.max(axis=1)
    return nearest, best


def plan(
    vectors: npt.NDArray[np.float32], nlist: int, *, seed: int = 0
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The centroids of ``nlist`` partitions, each row's partition, and the order that makes
    every partition's rows contiguous (partition after partition, rows in their order within
    one): the builder writes the rows in that order (layout 1)."""
    centroids = kmeans(vectors, nlist, seed=seed)
    nearest = assign(vectors, centroids)
    return centroids, nearest, np.argsort(nearest, kind="stable")


def write_partitions(
    out_dir: Path,
    vectors: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.uint64],
    docstore: npt.NDArray[np.uint8],
    nlist: int,
    *,
    seed: int = 0,
    planned: tuple[npt.NDArray[np.float32], npt.NDArray[np.intp]] | None = None,
) -> None:
    """Write ivf.head and ivf.parts for row-aligned ``vectors`` and docstore (``offsets``: the
    chunks + 1 record offsets into ``docstore``'s bytes). ``planned``: the centroids and each
    row's partition, as ``plan`` chose them; with the rows in its order, the head says so
    (layout 1)."""
    n, dim = vectors.shape
    if planned is None:
        centroids = kmeans(vectors, nlist, seed=seed)
        nearest = assign(vectors, centroids)
    else:
        centroids, nearest = planned
    order = np.argsort(nearest, kind="stable")
    layout = CONTIGUOUS if bool(np.all(np.diff(nearest) >= 0)) else 0
    counts = np.bincount(nearest, minlength=nlist)
    bounds = np.zeros(nlist + 1, dtype="<u8")
    sha256: list[bytes] = []
    with (out_dir / PARTS).open("wb") as out:
        start = 0
        for p in range(nlist):
            rows = order[start : start + counts[p]]
            start += counts[p]
            data = _partition(vectors, offsets, docstore, rows)
            out.write(data)
            sha256.append(hashlib.sha256(data).digest())
            bounds[p + 1] = bounds[p] + len(data)
    header = _HEADER.pack(_MAGIC, _VERSION, nlist, dim, n, _CODEC_INT8, layout)
    (out_dir / HEAD).write_bytes(
        header
        + np.ascontiguousarray(centroids, "<f4").tobytes()
        + bounds.tobytes()
        + b"".join(sha256)
    )


def _partition(
    vectors: npt.NDArray[np.float32],
    offsets: npt.NDArray[np.uint64],
    docstore: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.intp],
) -> bytes:
    block = np.ascontiguousarray(vectors[rows], dtype="<f4")
    peak = np.abs(block).max(axis=1) if len(rows) else np.zeros(0, np.float32)
    scales = np.where(peak > 0, peak / 127.0, 1.0).astype("<f4")
    codes = np.clip(np.rint(block / scales[:, None]), -127, 127).astype("i1")
    spans = np.stack([offsets[rows], offsets[rows + 1]], axis=1).astype("<u8")
    digests = b"".join(
        digest(block[i].tobytes()) + digest(docstore[int(s) : int(e)].tobytes())
        for i, (s, e) in enumerate(spans.tolist())
    )
    return b"".join(
        [
            rows.astype("<i4").tobytes(),
            scales.tobytes(),
            spans.tobytes(),
            digests,
            codes.tobytes(),
        ]
    )
