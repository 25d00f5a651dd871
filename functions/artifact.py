"""The index artifact format: the contract between the index builder and the query function.

An index lives under ``indexes/<index_id>/`` in the store and never changes once published:

    vectors.f32        float32 little-endian, C order, shape (chunks, dim), each row L2-normalised
    docstore.jsonl     one JSON record per chunk: {"id", "doc_id", "text", "metadata"}, in that
                       order (a reader may take the ids from the start of a line)
    docstore.offsets   uint64 little-endian, chunks + 1 byte offsets into docstore.jsonl
    columns.json       {metadata key: [its distinct values]}: every JSON value a key takes, null,
                       lists and objects included (format 1: strings, numbers and booleans only)
    columns.i32        int32 little-endian, (keys, chunks): index into the key's values, -1 when
                       the chunk has no such key (format 1: no such key, or a value it did not keep)
    hashes.bin         16 bytes a chunk: blake2b of (model, embedded text), for reuse
    ivf.head, ivf.parts  optional (indexes of ``ivf.MIN_ROWS`` chunks and more): the partition
                       index a cold function answers from by ranged reads (``ivf``)
    manifest.json      written last; for every file above its size, sha256 and the sha256 of each
                       8 MiB block (so blocks fetched in parallel are checked as they land); the
                       embedding model, and a probe (a fixed text and its vector) that proves the
                       serving model matches

Loading memory-maps every file, so it costs the same at any size; a chunk's text and metadata are
parsed only when it is a hit. ``FORMAT_VERSION`` changes whenever a reader of the old version
would misread the new one: format 2 gives code -1 a new meaning (absent only), so a format 1
reader, which refuses every version but its own, refuses it instead of answering list-valued
filters wrongly. This reader reads both; in format 1 it knows where -1 is ambiguous
(``complete_columns``). Distinct values are told apart by type as JSON does (``true``, ``1`` and
``1.0`` are three values); filters compare them as LlamaIndex does.

With a partition index the builder writes the rows partition by partition (``ivf`` layout 1):
row numbers are positions in these files, not the order the documents were read in.

Over 400 lines: the format's description, its writer and its reader stay in one module, so that
a change to one is seen beside the other two.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, ValidationError

from . import ivf
from .errors import IntegrityError, UnsupportedFormat
from .storage import block_hashes

__all__ = [
    "BLOCK_SIZE",
    "DATA_FILES",
    "FORMAT_VERSION",
    "MANIFEST",
    "OPTIONAL_FILES",
    "PROBE_TEXT",
    "READABLE_VERSIONS",
    "Artifact",
    "ChunkingSpec",
    "Counts",
    "EmbeddingSpec",
    "FileEntry",
    "Manifest",
    "NodeRecord",
    "Probe",
    "content_hash",
    "parse_manifest",
    "verify_file",
    "write_artifact",
]

FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
DATA_FILES = (
    "vectors.f32",
    "docstore.jsonl",
    "docstore.offsets",
    "columns.json",
    "columns.i32",
    "hashes.bin",
)
# Files a reader may do without: old readers ignore them, a reader that knows them uses them
# where the manifest lists them.
OPTIONAL_FILES = (ivf.HEAD, ivf.PARTS)
PROBE_TEXT = (
    "knative-rag embedding probe: the quick brown fox answers questions about serverless "
    "retrieval over versioned indexes."
)
_HASH_BYTES = 16
BLOCK_SIZE = 8 * 1024 * 1024
_WRITE_ROWS = 65536
_IDS_PREFIX = 512  # bytes of a docstore line read for its ids; a longer id parses the line


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EmbeddingSpec(_Model):
    """Which model made the vectors."""

    provider: str
    model: str
    dim: int
    normalized: bool = True


class ChunkingSpec(_Model):
    """How documents were cut into chunks."""

    splitter: str = "SentenceSplitter"
    chunk_size: int
    chunk_overlap: int


class Counts(_Model):
    """What the build did."""

    documents: int
    chunks: int
    embedded: int
    reused: int


class FileEntry(_Model):
    """Size, sha256 and per-block sha256 of one data file."""

    size: int
    sha256: str
    block_size: int
    blocks: list[str]


class Probe(_Model):
    """A fixed text and its embedding at build time."""

    text: str
    vector: list[float]


class Manifest(_Model):
    """The manifest of one index: everything needed to verify and load it."""

    format_version: int
    index_id: str
    created_at: datetime
    builder_version: str
    embedding: EmbeddingSpec
    chunking: ChunkingSpec
    counts: Counts
    files: dict[str, FileEntry]
    probe: Probe


@dataclass(frozen=True)
class NodeRecord:
    """One chunk's text, ids and metadata, as stored."""

    id: str
    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def content_hash(model_key: str, text: str) -> bytes:
    """Identify an embedding by the model that made it and the exact text it embeds."""
    return hashlib.blake2b(f"{model_key}\0{text}".encode(), digest_size=_HASH_BYTES).digest()


def parse_manifest(data: bytes) -> Manifest:
    """Parse manifest bytes, refusing unknown format versions before anything else."""
    try:
        raw = json.loads(data)
    except ValueError as exc:
        raise IntegrityError(f"manifest is not valid JSON: {exc}") from exc
    version = raw.get("format_version") if isinstance(raw, dict) else None
    if type(version) is not int or version not in READABLE_VERSIONS:
        readable = " and ".join(str(v) for v in READABLE_VERSIONS)
        raise UnsupportedFormat(
            f"index format version {version!r} is not supported (this build reads {readable})"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise IntegrityError(f"manifest is invalid: {exc.error_count()} error(s)") from exc
    missing = set(DATA_FILES) - set(manifest.files)
    if missing:
        raise IntegrityError(f"manifest lists no entry for {', '.join(sorted(missing))}")
    return manifest


def verify_file(name: str, entry: FileEntry, size: int, blocks: list[str]) -> None:
    """Refuse a file whose size or any block's sha256 differs from its manifest entry."""
    if size != entry.size:
        raise IntegrityError(f"{name}: {size} bytes, manifest says {entry.size} (truncated?)")
    for number, (actual, expected) in enumerate(zip(blocks, entry.blocks, strict=False)):
        if actual != expected:
            raise IntegrityError(f"{name}: sha256 of block {number} does not match the manifest")
    if len(blocks) != len(entry.blocks):
        raise IntegrityError(f"{name}: {len(blocks)} blocks, manifest says {len(entry.blocks)}")


def _columns(records: Sequence[NodeRecord]) -> tuple[dict[str, list[Any]], npt.NDArray[np.int32]]:
    """Each metadata key's distinct values, and per key and chunk the index of its value."""
    values: dict[str, dict[Any, int]] = {}
    firsts: dict[str, list[Any]] = {}
    rows: dict[str, list[tuple[int, int]]] = {}
    for row, record in enumerate(records):
        for key, value in record.metadata.items():
            lookup = values.setdefault(key, {})
            identity = _identity(value)
            code = lookup.get(identity)
            if code is None:
                code = lookup[identity] = len(lookup)
                firsts.setdefault(key, []).append(value)
            rows.setdefault(key, []).append((row, code))
    keys = sorted(values)
    codes = np.full((len(keys), len(records)), -1, dtype="<i4")
    for k, key in enumerate(keys):
        at = np.array(rows[key], dtype=np.int64).reshape(-1, 2)
        codes[k, at[:, 0]] = at[:, 1]
    return {key: firsts[key] for key in keys}, codes


def _identity(value: Any) -> Any:
    """A hashable key that tells JSON values apart as JSON does: ``True``, ``1`` and ``1.0``
    differ (Python's ``==`` and ``hash`` would merge them)."""
    if isinstance(value, float):  # repr: -0.0 is not 0.0, and every NaN is one value
        return (float, repr(value))
    if value is None or isinstance(value, str | int):  # bool is an int: the type tells
        return (type(value), value)
    return ("json", json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def write_artifact(
    out_dir: Path,
    *,
    vectors: npt.NDArray[np.float32],
    records: Sequence[NodeRecord],
    hashes: Sequence[bytes],
    embedding: EmbeddingSpec,
    chunking: ChunkingSpec,
    counts: Counts,
    probe: Probe,
    created_at: datetime,
    builder_version: str,
    partitions: int | None = None,
) -> Manifest:
    """Write an artifact's data files, then its manifest; returns the manifest.

    ``partitions``: of the partition index (``ivf``); None for ``ivf.partitions`` of the chunk
    count, 0 for none.
    """
    if vectors.shape != (len(records), embedding.dim) or len(hashes) != len(records):
        raise ValueError("vectors, records and hashes must be row-aligned")
    nlist = ivf.partitions(len(records)) if partitions is None else min(partitions, len(records))
    planned = None
    order: npt.NDArray[np.intp] | None = None  # rows in the order they are written
    if nlist:  # rows partition by partition (ivf layout 1): a partition is a slice of each file
        centroids, nearest, order = ivf.plan(vectors, nlist)
        records = [records[row] for row in order.tolist()]
        hashes = [hashes[row] for row in order.tolist()]
        planned = centroids, nearest[order]
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "vectors.f32").open("wb") as handle:
        for start in range(0, len(records), _WRITE_ROWS):  # in blocks: no second copy of all
            end = start + _WRITE_ROWS
            rows = slice(start, end) if order is None else order[start:end]
            np.ascontiguousarray(vectors[rows], dtype="<f4").tofile(handle)
    offsets = np.zeros(len(records) + 1, dtype="<u8")
    with (out_dir / "docstore.jsonl").open("wb") as handle:
        for row, record in enumerate(records):
            line = json.dumps(
                {
                    "id": record.id,
                    "doc_id": record.doc_id,
                    "text": record.text,
                    "metadata": record.metadata,
                },
                ensure_ascii=False,
                separators=(",", ":"),
            ).encode()
            handle.write(line + b"\n")
            offsets[row + 1] = offsets[row] + len(line) + 1
    offsets.tofile(out_dir / "docstore.offsets")
    values, codes = _columns(records)
    (out_dir / "columns.json").write_text(json.dumps(values, ensure_ascii=False))
    codes.tofile(out_dir / "columns.i32")
    (out_dir / "hashes.bin").write_bytes(b"".join(hashes))
    names: tuple[str, ...] = DATA_FILES
    if nlist:
        docstore = np.fromfile(out_dir / "docstore.jsonl", dtype="u1")
        written = _map(out_dir / "vectors.f32", "<f4", (len(records), embedding.dim))
        ivf.write_partitions(out_dir, written, offsets, docstore, nlist, planned=planned)
        names += OPTIONAL_FILES

    files = {}
    for name in names:
        path = out_dir / name
        with path.open("rb") as handle:
            sha256 = hashlib.file_digest(handle, "sha256").hexdigest()
        files[name] = FileEntry(
            size=path.stat().st_size,
            sha256=sha256,
            block_size=BLOCK_SIZE,
            blocks=block_hashes(path, BLOCK_SIZE),
        )
    # The id is the build time and a hash of what is served: the same documents, chunking and
    # model give the same suffix. Two such builds in the same second get the same id, which is
    # the same index (``publish`` then keeps the one already there).
    fingerprint = hashlib.sha256(
        json.dumps(
            [
                embedding.model_dump(),
                chunking.model_dump(),
                {n: f.sha256 for n, f in files.items()},
            ]
        ).encode()
    ).hexdigest()
    manifest = Manifest(
        format_version=FORMAT_VERSION,
        index_id=f"{created_at:%Y%m%d-%H%M%S}-{fingerprint[:8]}",
        created_at=created_at,
        builder_version=builder_version,
        embedding=embedding,
        chunking=chunking,
        counts=counts,
        files=files,
        probe=probe,
    )
    (out_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2))
    return manifest


class Artifact:
    """A verified artifact's files, memory-mapped; text and metadata are parsed per hit."""

    def __init__(
        self, manifest: Manifest, paths: dict[str, Path], *, populate: bool = False
    ) -> None:
        """``populate``: map the vectors' pages all at once (``_map``), for files that were just
        downloaded (so in the page cache)."""
        self.manifest = manifest
        n, dim = manifest.counts.chunks, manifest.embedding.dim
        self.vectors: npt.NDArray[np.float32] = _map(
            paths["vectors.f32"], "<f4", (n, dim), populate=populate
        )
        self._offsets: npt.NDArray[np.uint64] = _map(paths["docstore.offsets"], "<u8", (n + 1,))
        self._docstore: npt.NDArray[np.uint8] = _map(paths["docstore.jsonl"], "u1", (-1,))
        self.columns: dict[str, list[Any]] = json.loads(paths["columns.json"].read_bytes())
        self.codes: npt.NDArray[np.int32] = _map(
            paths["columns.i32"], "<i4", (len(self.columns), n)
        )
        self.hashes: npt.NDArray[np.void] = _map(paths["hashes.bin"], f"V{_HASH_BYTES}", (n,))
        # The partition index's head, where the artifact has one (and it was fetched): with
        # layout 1, the in-memory search can score the nearest partitions only.
        self.head: ivf.Head | None = None
        if ivf.HEAD in paths:
            self.head = ivf.Head.parse(paths[ivf.HEAD].read_bytes(), rows=n, dim=dim)
        self._ids: tuple[list[str], list[str]] | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    @property
    def complete_columns(self) -> bool:
        """Whether code -1 means only "no such key" (format 2); format 1 also gave it to null,
        list and object values."""
        return self.manifest.format_version >= 2

    def ids(self) -> tuple[list[str], list[str]]:
        """Every chunk's id and document id, read from the start of its docstore line on first
        use (about 3 us a chunk), then kept."""
        if self._ids is None:
            decoder = json.JSONDecoder()
            offsets = self._offsets.tolist()
            ids: list[str] = []
            docs: list[str] = []
            for row in range(len(self)):
                start = offsets[row]
                head = self._docstore[start : min(offsets[row + 1], start + _IDS_PREFIX)]
                text = head.tobytes().decode("utf-8", "ignore")  # a cut character, at the end
                try:
                    node, at = decoder.raw_decode(text, len('{"id":'))
                    doc, _ = decoder.raw_decode(text, at + len(',"doc_id":'))
                    if not (
                        text.startswith('{"id":')
                        and text.startswith(',"doc_id":', at)
                        and isinstance(node, str)
                        and isinstance(doc, str)
                    ):
                        raise ValueError(text)
                except ValueError:  # cut short, or not the writer's layout: parse the line
                    record = self.record(row)
                    node, doc = record.id, record.doc_id
                ids.append(node)
                docs.append(doc)
            self._ids = ids, docs
        return self._ids

    def record(self, row: int) -> NodeRecord:
        """Parse one chunk's record."""
        start, end = int(self._offsets[row]), int(self._offsets[row + 1])
        raw = json.loads(self._docstore[start:end].tobytes())
        return NodeRecord(raw["id"], raw["doc_id"], raw["text"], raw["metadata"])


def _map(path: Path, dtype: str, shape: tuple[int, ...], *, populate: bool = False) -> Any:
    """The file as a read-only array over its mapping. ``populate``: fill the page tables now
    (MAP_POPULATE, Linux), not a fault a page on first use: in page cache that is 0.17 s for the
    3 GB of vectors at 1M x 768, and the first queries scored on them no longer fault their pages
    in (a first query over 96 partitions at 1M: 28 ms, then 19 ms; bench/cold_path.py)."""
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize if shape != (-1,) else None
    size = path.stat().st_size
    if expected is not None and size != expected:
        raise IntegrityError(f"{path.name}: {size} bytes, expected {expected} for shape {shape}")
    if size == 0:
        return np.zeros(shape if shape != (-1,) else (0,), dtype=dtype)
    flag = getattr(mmap, "MAP_POPULATE", 0)
    if populate and flag and shape != (-1,):
        with path.open("rb") as handle:
            mapping = mmap.mmap(
                handle.fileno(), 0, flags=mmap.MAP_SHARED | flag, prot=mmap.PROT_READ
            )
        return np.frombuffer(mapping, dtype=dtype).reshape(shape)  # keeps the mapping alive
    mapped = np.memmap(path, dtype=dtype, mode="r", shape=None if shape == (-1,) else shape)
    # A plain array over the mapping: every slice of a memmap runs its Python __array_finalize__
    # (7 % of the function's busy samples under load with 96 slices a query, py-spy); the view
    # keeps the mapping alive.
    return np.asarray(mapped)
