"""Published indexes loaded into Elasticsearch, and channels as aliases on them.

    <prefix>-<index_id>   one Elasticsearch index per published index: an explicit mapping whose
                          ``_meta`` carries the manifest's facts, bulk-loaded, refreshed, counted
                          against the manifest, then write-blocked (the mark of a finished load)
    <prefix>-<channel>    an alias on the index that the channel names in the store

The mapping and the documents are ``elastic_layout``'s: what LlamaIndex's ``ElasticsearchStore``
reads. The object store stays the source of truth: an index is loaded and checked before a
channel may name it, and an alias moves only after the store's channel moved (``publish`` orders
that). This is the only module that talks to Elasticsearch; what it raises for Elasticsearch's
failures is ``ElasticsearchError``.
"""

from __future__ import annotations

import logging
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch, NotFoundError
from elasticsearch.helpers import BulkIndexError, streaming_bulk

from functions.artifact import Artifact, Manifest
from functions.catalog import channel_key, index_key, is_index_id
from functions.errors import ConfigurationError, ElasticsearchError
from functions.es_client import client_options, explained, reason
from functions.logs import redact

from .elastic_layout import document, index_body
from .progress import Phase, Progress

__all__ = ["Cluster", "ElasticsearchError", "LoadedIndex"]  # the error: functions.errors

logger = logging.getLogger(__name__)

_BULK_DOCS = 250
_BULK_BYTES = 8 * 1024 * 1024  # a 768-dim chunk is about 17 KB of JSON: 250 are 4 MiB
_SENDERS = 2


@dataclass(frozen=True)
class LoadedIndex:
    """One ``<prefix>-<index id>`` index in Elasticsearch: its documents, whether its load
    finished, the channels whose aliases name it, and when it was created."""

    index_id: str
    name: str
    docs: int
    complete: bool
    channels: list[str]
    created: datetime
    manifest_sha256: str | None


class Cluster:
    """An Elasticsearch cluster that published indexes are loaded into, channels as aliases."""

    label = "Elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        prefix: str = "knative-rag",
        replicas: int = 1,
        timeout_s: float = 30.0,
        bulk_docs: int = _BULK_DOCS,
    ) -> None:
        self.url = redact(url)  # what messages name: never credentials
        self.prefix, self.replicas, self.timeout_s, self.bulk_docs = (
            prefix,
            replicas,
            timeout_s,
            bulk_docs,
        )
        auth = client_options(
            api_key=api_key, username=username, password=password, ca_file=ca_file
        )
        try:
            # Never info() or ping(): they call GET /, which some clusters do not serve.
            self._client = Elasticsearch(
                url,
                request_timeout=timeout_s,
                max_retries=2,
                retry_on_timeout=True,
                **auth,
            )
        except (ValueError, TypeError, OSError) as exc:  # a bad URL, a missing CA file
            raise ConfigurationError(f"Elasticsearch cannot be used as set: {exc}") from exc

    def close(self) -> None:
        """Close the connections."""
        self._client.close()

    def index_name(self, index_id: str) -> str:
        """The Elasticsearch index of a published index."""
        index_key(index_id)  # refuses what is not an index id
        return f"{self.prefix}-{index_id}"

    def alias(self, channel: str) -> str:
        """The alias of a channel; a channel named like an index id has none (the alias would
        be an index's name)."""
        channel_key(channel)
        if is_index_id(channel):
            raise ConfigurationError(
                f"channel {channel!r} is named like an index id: its Elasticsearch alias "
                f"would be the name of an index"
            )
        return f"{self.prefix}-{channel}"

    def check(self) -> None:
        """Fail now, with the reason, when the cluster cannot be reached or refuses us."""
        with self._errors(f"read {self.prefix}-*"):
            self._client.indices.exists(index=f"{self.prefix}-*")

    def load(
        self,
        manifest: Manifest,
        manifest_sha256: str,
        artifact: Callable[[Path], Artifact],
        progress: Progress,
    ) -> bool:
        """Load a published index unless it is loaded already; False when it was.

        ``artifact`` opens the index's files (downloading them into the folder it is given) only
        when they are needed. An index left incomplete by an earlier load is deleted and loaded
        again; whatever fails deletes what this load created.
        """
        name = self.index_name(manifest.index_id)
        found = self._find(name).get(manifest.index_id)  # unreachable: one line, no phase
        with progress.phase("elasticsearch", manifest.counts.chunks, "chunks") as phase:
            if found is not None and found.complete and found.manifest_sha256 == manifest_sha256:
                phase.notes.append("already loaded")
                return False
            if found is not None:  # a load that did not finish (or, never, another manifest's)
                self._delete_unaliased(found, "incomplete" if not found.complete else "stale")
            with tempfile.TemporaryDirectory(prefix="rag-elasticsearch-") as tmp:
                opened = artifact(Path(tmp))
                self._create(name, manifest, manifest_sha256, opened.columns)
                try:
                    self._bulk(name, opened, phase)
                    self._finish(name, manifest)
                except Exception:
                    self._discard(name)
                    raise
            phase.notes.append(name)
        return True

    def point(self, channel: str, index_id: str) -> None:
        """Move the channel's alias to the index with one atomic ``POST _aliases`` (remove it
        from whatever index has it, add it to this one); only a completely loaded index."""
        alias, name = self.alias(channel), self.index_name(index_id)
        found = self._find(name).get(index_id)
        if found is None or not found.complete:
            raise ElasticsearchError(f"{name} is not completely loaded: {alias} stays where it is")
        for _ in range(3):
            with self._errors(f"read alias {alias}"):
                try:
                    holders = sorted(self._client.indices.get_alias(name=alias).body)
                except NotFoundError:
                    holders = []
            if holders == [name]:
                return
            actions: list[dict[str, Any]] = [
                {"remove": {"index": holder, "alias": alias, "must_exist": True}}
                for holder in holders
                if holder != name
            ]
            actions.append({"add": {"index": name, "alias": alias}})
            with self._errors(f"move alias {alias}"):
                try:
                    self._client.indices.update_aliases(actions=actions)
                except NotFoundError:  # another publisher moved it since: read it again
                    continue
            return
        raise ElasticsearchError(f"alias {alias} kept moving: it was not moved to {name}")

    def indexes(self) -> list[LoadedIndex]:
        """Every ``<prefix>-<index id>`` index, newest id first."""
        return sorted(self._find(f"{self.prefix}-*").values(), key=lambda i: i.index_id)[::-1]

    def collect(self, kept: set[str], *, dry_run: bool, incomplete_after: timedelta) -> list[str]:
        """Delete the indexes that no alias names and whose index ids are not in ``kept``; one
        whose load has not finished only once older than ``incomplete_after`` (it may be loading
        now). Returns their names."""
        now = datetime.now(UTC)
        doomed = [
            found
            for found in self.indexes()
            if not found.channels
            and found.index_id not in kept
            and (found.complete or now - found.created > incomplete_after)
        ]
        if dry_run:
            return [found.name for found in doomed]
        deleted = []
        for found in doomed:
            again = self._find(found.name).get(found.index_id)
            if again is not None and not again.channels:  # an alias may have moved meanwhile
                self._delete_unaliased(again, "unused")
                deleted.append(found.name)
        return deleted

    def _find(self, pattern: str) -> dict[str, LoadedIndex]:
        """The indexes ``pattern`` (a name or ``<prefix>-*``) matches, by index id."""
        found = {}
        with self._errors(f"read {pattern}"):
            indexes = self._client.indices.get(index=pattern, ignore_unavailable=True).body
            for name, body in indexes.items():
                index_id = name.removeprefix(f"{self.prefix}-")
                if not name.startswith(f"{self.prefix}-") or not is_index_id(index_id):
                    continue  # another prefix that starts with ours
                meta = body["mappings"].get("_meta", {})
                settings = body["settings"]["index"]
                docs = self._client.count(index=name)["count"]
                chunks = meta.get("counts", {}).get("chunks")
                found[index_id] = LoadedIndex(
                    index_id=index_id,
                    name=name,
                    docs=docs,
                    complete=meta.get("index_id") == index_id
                    and settings.get("blocks", {}).get("write") == "true"
                    and docs == chunks,
                    channels=sorted(
                        alias.removeprefix(f"{self.prefix}-") for alias in body["aliases"]
                    ),
                    created=datetime.fromtimestamp(int(settings["creation_date"]) / 1000, UTC),
                    manifest_sha256=meta.get("manifest_sha256"),
                )
        return found

    def _create(
        self, name: str, manifest: Manifest, sha256: str, columns: dict[str, list[Any]]
    ) -> None:
        body = index_body(manifest, sha256, columns, self.replicas)
        with self._errors(f"create index {name}"):
            self._client.indices.create(index=name, **body)

    def _bulk(self, name: str, artifact: Artifact, phase: Phase) -> None:
        vectors, stop, lock = artifact.vectors, threading.Event(), threading.Lock()

        def actions(rows: range) -> Iterator[dict[str, Any]]:
            for row in rows:
                if stop.is_set():  # another sender failed: the load is over
                    return
                yield document(name, artifact.record(row), vectors[row])

        def send(rows: range) -> None:
            for _ in streaming_bulk(
                self._client,
                actions(rows),
                chunk_size=self.bulk_docs,
                max_chunk_bytes=_BULK_BYTES,
                max_retries=3,  # a document refused with 429 (the cluster is busy) is sent again
                initial_backoff=1,
            ):
                with lock:
                    phase.update(1)

        # Two requests in flight: the cluster indexes one while the next is serialised here
        # (twice the documents a second of one sender on the test server; more gained little).
        step = self.bulk_docs * 4
        slices = [range(at, min(at + step, len(artifact))) for at in range(0, len(artifact), step)]
        with self._errors(f"load {name}"), ThreadPoolExecutor(_SENDERS, "bulk") as pool:
            futures = [pool.submit(send, rows) for rows in slices]
            try:
                for future in futures:
                    future.result()
            finally:
                stop.set()
                for future in futures:
                    future.cancel()

    def _finish(self, name: str, manifest: Manifest) -> None:
        with self._errors(f"finish {name}"):
            self._client.indices.put_settings(index=name, settings={"refresh_interval": None})
            self._client.indices.refresh(index=name)
            docs = self._client.count(index=name)["count"]
            meta = self._client.indices.get_mapping(index=name)[name]["mappings"].get("_meta", {})
        if docs != manifest.counts.chunks or meta.get("index_id") != manifest.index_id:
            raise ElasticsearchError(
                f"{name} holds {docs} documents after its load, the manifest says "
                f"{manifest.counts.chunks}: it is deleted"
            )
        with self._errors(f"finish {name}"):
            self._client.indices.put_settings(index=name, settings={"index.blocks.write": True})

    def _delete_unaliased(self, found: LoadedIndex, why: str) -> None:
        if found.channels:
            raise ElasticsearchError(
                f"{found.name} is {why} but aliased ({', '.join(found.channels)}): not deleted"
            )
        with self._errors(f"delete {found.name}"):
            self._client.indices.delete(index=found.name)

    def _discard(self, name: str) -> None:
        """Delete what a failed load created, if the cluster lets us; else the next load will."""
        try:
            self._client.options(ignore_status=404).indices.delete(index=name)
        except (ApiError, TransportError) as exc:
            logger.debug("could not delete %s after a failed load: %s", name, type(exc).__name__)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Elasticsearch's and its transport's exceptions as one-line ``ElasticsearchError``s."""
        try:
            with explained(self.url, doing, self.timeout_s):
                yield
        except BulkIndexError as exc:
            [(action, item)] = exc.errors[0].items()
            raise ElasticsearchError(
                f"Elasticsearch refused chunk {item.get('_id')!r} ({action}) while trying to "
                f"{doing}: {reason(item.get('error'))} ({len(exc.errors)} refused in one request)"
            ) from exc
