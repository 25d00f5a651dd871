"""Where the vectors live: the seam between the loader and the index a process serves.

A ``Backend`` turns the configured name (a channel or a pinned index id) into the index it names
now (``locate``), tells what that index is (``describe``: its manifest, whose probe the embedding
model is checked against), refuses what this process cannot serve (``admit``) and opens it for
search (``open``). What it opens is a ``Searcher``: top-k search with the filters module's
``FilterGroup`` for retrieve mode, and a LlamaIndex vector store for the query and chat engines.
Nothing above this seam knows which backend serves.

- ``ArtifactBackend``: the index artifact, downloaded from the object store, verified and
  memory-mapped; exact search, or by the nearest partitions from 250,000 chunks up
  (``search``). For a corpus one replica can hold. From a remote
  store, an index with a partition index is answered on demand by ranged reads until it has
  arrived (``tiered``), so the cold start does not grow with the corpus.
- ``functions.elastic.ElasticsearchBackend``: the index loaded into Elasticsearch by the builder;
  nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from . import ivf
from .artifact import DATA_FILES, Manifest, NodeRecord
from .catalog import Pointer, fetch_artifact, is_index_id, read_manifest, read_pointer
from .cold import ColdIndex
from .errors import ConfigurationError, IndexTooLarge
from .filters import FilterGroup
from .search import Hit, SearchIndex
from .storage import LocalStore, Store
from .tiered import TieredSearcher

__all__ = [
    "MANIFEST_FACTS",
    "PARTITIONS_FROM_CHUNKS",
    "ArtifactBackend",
    "Backend",
    "Located",
    "Searcher",
    "manifest_of",
    "record_of",
    "warm_probes",
]

MiB = 1024 * 1024
# From here up an exact query reads enough memory to matter: in process here, 15 ms at 100k x
# 768 and 190 ms at 1M (linear in the rows), against 18 ms for the 96 nearest of 1,000
# partitions at 1M, recall@10 0.99 (bench/cold_path.py). Below it, exact costs little.
PARTITIONS_FROM_CHUNKS = 250_000


@dataclass(frozen=True)
class Located:
    """The index a name names now: its id and, where known, its manifest's sha256 (an index's
    identity: indexes are immutable) and its manifest (when locating read it already)."""

    index_id: str
    manifest_sha256: str | None = None
    manifest: Manifest | None = None
    pointer: Any = None  # the backend's own note of where it found the index


class Searcher(Protocol):
    """One opened index."""

    @property
    def manifest(self) -> Manifest:
        """What the index is: id, model, counts, probe."""

    def __len__(self) -> int:
        """Chunks in the index."""

    def search(
        self,
        query: npt.NDArray[np.float32],
        top_k: int,
        where: FilterGroup | None = None,
        *,
        text: str | None = None,
    ) -> list[Hit]:
        """The ``top_k`` chunks most similar to ``query`` among those ``where`` admits, best
        first, scored by cosine similarity (``text``: the question, for hybrid retrieval)."""

    def vector_store(self) -> Any:
        """The index as a LlamaIndex vector store (imports LlamaIndex)."""

    def close(self) -> None:
        """Stop serving: searches already started finish."""


class Backend(Protocol):
    """Resolves names to indexes and opens them."""

    name: str

    def locate(self, name: str) -> Located:
        """The index ``name`` (a channel or an index id) names now."""

    def describe(self, name: str, located: Located) -> Manifest:
        """The located index's manifest."""

    def admit(self, manifest: Manifest) -> None:
        """Refuse (a ``RagError``) an index this process must not open, before opening it."""

    def open(self, manifest: Manifest, timings: dict[str, float]) -> Searcher:
        """Open the index for search, noting its phases' seconds in ``timings``."""

    def retire(self, searcher: Searcher) -> None:
        """The searcher no longer serves: close it and give back what it held."""

    def close(self) -> None:
        """The process stops serving: close connections."""


class ArtifactBackend:
    """Index artifacts from the object store, downloaded into ``cache_dir`` and mapped.

    ``budget``: the largest index (bytes, the files it downloads) this process may hold; None
    for none. ``on_demand``: answer from the store by ranged reads while an index downloads,
    where it has a partition index and the store is remote, reading ``probes`` partitions a
    query (``cold``). ``warm_search``: how the index in memory answers a query without
    filters: ``exact``, ``partitions`` (its ``warm_probes`` nearest partitions, where the
    artifact lays its rows out by partition) or ``auto`` (partitions from
    ``PARTITIONS_FROM_CHUNKS`` up).
    """

    name = "artifact"

    def __init__(
        self,
        store: Callable[[], Store],
        cache_dir: Path,
        *,
        budget: int | None = None,
        on_demand: bool = True,
        probes: int = 16,
        warm_search: Literal["auto", "exact", "partitions"] = "auto",
        warm_probes: int = 96,
    ) -> None:
        self._open_store = store
        self._store: Store | None = None
        self._store_client_s = 0.0
        self.cache_dir = cache_dir
        self.budget = budget
        self.on_demand = on_demand
        self.probes = probes
        self.warm_search = warm_search
        self.warm_probes = warm_probes

    @property
    def store(self) -> Store:
        """The object store, its client made on first use (a cold-start phase)."""
        if self._store is None:
            step = time.perf_counter()
            self._store = self._open_store()
            self._store_client_s = time.perf_counter() - step
        return self._store

    def locate(self, name: str) -> Located:
        """A pinned id names itself; a channel, the index its pointer names."""
        if is_index_id(name):
            return Located(name)
        pointer = read_pointer(self.store, name)
        return Located(pointer.index_id, pointer.manifest_sha256, pointer=pointer)

    def describe(self, name: str, located: Located) -> Manifest:
        """The manifest, checked against the channel's pointer (its sha256)."""
        pointer = located.pointer if isinstance(located.pointer, Pointer) else None
        return read_manifest(self.store, name, pointer=pointer)

    def admit(self, manifest: Manifest) -> None:
        """Refuse an index whose files would not fit the memory budget (the partition index is
        read on demand, never held whole)."""
        size = sum(manifest.files[name].size for name in DATA_FILES)
        if self.budget is not None and size > self.budget:
            raise IndexTooLarge(
                f"index {manifest.index_id} is {size / MiB:.0f} MiB, more than the memory "
                f"budget of {self.budget / MiB:.0f} MiB (RAG_MAX_INDEX_MB or the memory limit)"
            )

    def open(self, manifest: Manifest, timings: dict[str, float]) -> SearchIndex | TieredSearcher:
        """Download (or open in place) and verify every file, then map them; from a remote
        store, open the partition index and download the rest in the background instead."""
        timings["store_client"] = self._store_client_s
        store = self.store
        if self.on_demand and ivf.HEAD in manifest.files and not isinstance(store, LocalStore):
            step = time.perf_counter()
            cold = ColdIndex(store, manifest, probes=self.probes)
            timings["partition_index"] = time.perf_counter() - step
            return TieredSearcher(cold, lambda: self._download(manifest, timings), timings)
        return self._download(manifest, timings)

    def _download(self, manifest: Manifest, timings: dict[str, float]) -> SearchIndex:
        step = time.perf_counter()
        # Downloaded files are in the page cache: map their vectors at once. A local store's
        # files open in place, maybe from a disk: their pages are read as queries need them.
        downloaded = not isinstance(self.store, LocalStore)
        artifact = fetch_artifact(self.store, manifest, self.cache_dir, populate=downloaded)
        timings["fetch_and_verify"] = time.perf_counter() - step
        step = time.perf_counter()
        index = SearchIndex(artifact, probes=self._warm_probes(manifest))
        timings["map"] = time.perf_counter() - step
        return index

    def _warm_probes(self, manifest: Manifest) -> int | None:
        return warm_probes(manifest.counts.chunks, self.warm_search, self.warm_probes)

    def retire(self, searcher: Searcher) -> None:
        """Stop the index's search thread; free its downloaded files in the cache (memory on
        Knative). Requests still on it keep their mappings until they finish. A local store's
        files are used in place and have no copy in the cache."""
        folder = self.cache_dir / searcher.manifest.index_id
        if isinstance(searcher, TieredSearcher):  # its download may still be writing there
            searcher.close(then=lambda: shutil.rmtree(folder, ignore_errors=True))
            return
        searcher.close()
        shutil.rmtree(folder, ignore_errors=True)

    def close(self) -> None:
        """Nothing to close: the store's client needs none."""


def warm_probes(chunks: int, search: str, probes: int) -> int | None:
    """The partitions a query scores in memory in an index of ``chunks`` with RAG_WARM_SEARCH
    ``search`` and RAG_WARM_PROBES ``probes``; None: every row (exact)."""
    if search == "auto":
        search = "partitions" if chunks >= PARTITIONS_FROM_CHUNKS else "exact"
    return probes if search == "partitions" else None


def require_store_uri(store_uri: str | None) -> str:
    """The store URI, or the configuration error that says it is missing."""
    if not store_uri:
        raise ConfigurationError("RAG_STORE_URI is not set", public="RAG_STORE_URI is not set")
    return store_uri


# What a backend that serves an index loaded elsewhere (Elasticsearch's _meta, PostgreSQL's
# indexes row) keeps of its manifest: all but the files, which it does not download.
MANIFEST_FACTS = (
    "format_version",
    "index_id",
    "created_at",
    "builder_version",
    "embedding",
    "chunking",
    "counts",
    "probe",
)


def manifest_of(facts: dict[str, Any]) -> Manifest:
    """The manifest whose ``MANIFEST_FACTS`` a loaded index keeps, without files."""
    return Manifest.model_validate(
        {**{name: facts[name] for name in MANIFEST_FACTS if name in facts}, "files": {}}
    )


def record_of(node_id: str, text: str, node_content: str) -> NodeRecord:
    """A stored chunk as the artifact's record: the node LlamaIndex's ``node_to_metadata_dict``
    kept as JSON in ``_node_content`` (its own metadata: the flat copy beside it has the node
    fields written over any user key of the same name), and the text stored beside it."""
    node = json.loads(node_content)
    parent = (node.get("relationships") or {}).get("1") or {}
    return NodeRecord(node_id, parent.get("node_id") or "", text, node.get("metadata") or {})
