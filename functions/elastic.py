"""The Elasticsearch backend: the function serves an index the builder loaded, downloading none.

    <prefix>-<index id>   the index (``index_builder.elastic``): ``_meta`` holds its manifest's
                          facts, a write block marks a finished load
    <prefix>-<channel>    the channel's alias, moved by the builder after the store's channel

A pinned index id names its index; a channel, whatever index its alias names now (one request:
the alias's mapping, whose ``_meta`` is the manifest). The embedding model is checked against
the ``_meta``'s probe as for an artifact, and an index whose load did not finish (no write
block, fewer documents than the manifest's chunks) is never served.

Searches go through the Elasticsearch client's ``AsyncVectorStore`` (the one LlamaIndex's
``ElasticsearchStore`` wraps) with one request shape (``elastic_search.Knn``): retrieve mode calls
it directly, without importing LlamaIndex at the cold start; answer mode and chat run LlamaIndex's
standard query and chat engines on ``ElasticsearchStore`` (``elastic_store.ServingStore``), which
makes the same requests and answers as the artifact's store does (cosine similarities, the
artifact's filters). The async client lives on one event loop in a thread of its own: every
caller (request threads, the engines) submits to that loop and waits at most the request
timeout; a search that runs past it is cancelled and is a 504, an unreachable or overloaded
cluster a 503, both with Retry-After. LlamaIndex's store applies ``nest_asyncio`` to the loop it
is made on: it is made on that loop, never on the server's.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from .artifact import Manifest
from .backends import Located, manifest_of
from .catalog import channel_key, index_key, is_index_id
from .errors import (
    ConfigurationError,
    ElasticsearchError,
    ElasticsearchTimeout,
    ElasticsearchUnavailable,
    ObjectNotFound,
)
from .es_client import client_options, credentials, explained
from .logs import redact

if TYPE_CHECKING:
    from elasticsearch import AsyncElasticsearch

    from .elastic_search import ElasticsearchSearcher
    from .settings import Settings

__all__ = ["SLACK_S", "ElasticsearchBackend"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SLACK_S = 1.0  # beyond the client's own timeout, before a caller stops waiting


class _Loop:
    """An event loop in a daemon thread of its own, and a way to wait for work done on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="elasticsearch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, work: Coroutine[Any, Any, T], timeout_s: float) -> T:
        """Run ``work`` on the loop; cancel it after ``timeout_s`` (``TimeoutError``)."""
        future = asyncio.run_coroutine_threadsafe(work, self.loop)
        try:
            return future.result(timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError from None

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)


class ElasticsearchBackend:
    """Indexes in Elasticsearch: located by alias or name, described by ``_meta``, searched
    through LlamaIndex's ``ElasticsearchStore``."""

    name = "elasticsearch"

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        username: str | None = None,
        password: str | None = None,
        ca_file: Any = None,
        prefix: str = "knative-rag",
        timeout_s: float = 30.0,
        num_candidates: int = 1000,
        hybrid: bool = False,
    ) -> None:
        self.url = redact(url)  # what messages name: never credentials
        self.prefix, self.timeout_s = prefix, timeout_s
        self.num_candidates, self.hybrid = num_candidates, hybrid
        self._options = client_options(
            api_key=api_key, username=username, password=password, ca_file=ca_file
        )
        self._raw_url = url
        self._loop: _Loop | None = None
        self._client: AsyncElasticsearch | None = None
        self._lock = threading.Lock()
        self._facts: dict[str, dict[str, dict[str, Any]] | None] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> ElasticsearchBackend:
        """The backend ``RAG_ELASTICSEARCH_*`` describe; refuses what cannot work."""
        if not settings.elasticsearch_url:
            raise ConfigurationError(
                "RAG_BACKEND=elasticsearch needs RAG_ELASTICSEARCH_URL",
                public="RAG_ELASTICSEARCH_URL is not set",
            )
        return cls(
            settings.elasticsearch_url,
            **credentials(settings),
            prefix=settings.elasticsearch_index_prefix,
            timeout_s=settings.elasticsearch_timeout_s,
            num_candidates=settings.elasticsearch_num_candidates,
            hybrid=settings.retrieval == "hybrid",
        )

    def _target(self, name: str) -> str:
        """The Elasticsearch name for a pinned index id or a channel's alias."""
        (index_key if is_index_id(name) else channel_key)(name)  # refuses any other name
        return f"{self.prefix}-{name}"

    def _started(self) -> tuple[_Loop, AsyncElasticsearch]:
        with self._lock:
            if self._loop is None or self._client is None:
                from elasticsearch import AsyncElasticsearch

                loop = _Loop()

                async def make() -> AsyncElasticsearch:  # on the loop: aiohttp binds to it
                    try:
                        return AsyncElasticsearch(
                            self._raw_url,
                            request_timeout=self.timeout_s,
                            max_retries=1,
                            retry_on_timeout=False,
                            **self._options,
                        )
                    except (ValueError, TypeError, OSError) as exc:  # a bad URL, a CA file
                        raise ConfigurationError(
                            f"Elasticsearch cannot be used as set: {exc}"
                        ) from exc

                try:
                    self._client = loop.run(make(), self.timeout_s)
                except BaseException:
                    loop.close()
                    raise
                self._loop = loop
            return self._loop, self._client

    def call(self, work: Coroutine[Any, Any, T], doing: str) -> T:
        """Run a request on the client's loop, translating its failures."""
        loop, _ = self._started()
        try:
            with explained(self.url, doing, self.timeout_s):
                return loop.run(work, self.timeout_s + SLACK_S)
        except TimeoutError as exc:
            raise ElasticsearchTimeout(
                f"{self.url} did not answer within {self.timeout_s:g} s while trying to {doing}"
            ) from exc

    def locate(self, name: str) -> Located:
        """The index ``name`` names: ``<prefix>-<id>`` or the alias's one index, with the
        manifest its ``_meta`` holds."""
        from elasticsearch import NotFoundError

        target = self._target(name)
        _, client = self._started()
        try:
            mappings = self.call(client.indices.get_mapping(index=target), f"read {target}")
        except ElasticsearchError as exc:
            if isinstance(exc.__cause__, NotFoundError):
                what = f"index {name}" if is_index_id(name) else f"channel {name!r}"
                raise ObjectNotFound(
                    f"{what} is not in Elasticsearch at {self.url} ({target} does not exist): "
                    "load it with the builder's load command",
                    public=f"{what} is not in Elasticsearch",
                ) from exc
            raise
        body = dict(mappings)
        if len(body) != 1:
            raise ElasticsearchError(f"{target} names {len(body)} indexes, not one")
        [(index, mapping)] = body.items()
        meta = mapping["mappings"].get("_meta") or {}
        index_id = index.removeprefix(f"{self.prefix}-")
        if meta.get("index_id") != index_id:
            raise ElasticsearchError(
                f"{index} is not an index the builder loaded (its _meta names "
                f"{meta.get('index_id')!r})"
            )
        manifest = manifest_of(meta)
        self._facts[index_id] = meta.get("metadata")  # what open() translates filters with
        return Located(index_id, meta.get("manifest_sha256"), manifest)

    def describe(self, name: str, located: Located) -> Manifest:
        """The manifest ``locate`` read from ``_meta``."""
        assert located.manifest is not None
        return located.manifest

    def admit(self, manifest: Manifest) -> None:
        """Nothing is downloaded: any size is served."""

    def open(self, manifest: Manifest, timings: dict[str, float]) -> ElasticsearchSearcher:
        """Check that the index's load finished; then search it."""
        index = f"{self.prefix}-{manifest.index_id}"
        _, client = self._started()
        step = time.perf_counter()
        settings = self.call(client.indices.get_settings(index=index), f"read {index}")
        docs = self.call(client.count(index=index), f"count {index}")["count"]
        blocked = settings[index]["settings"]["index"].get("blocks", {}).get("write") == "true"
        if not blocked or docs != manifest.counts.chunks:
            raise ElasticsearchUnavailable(  # transient: a load may be finishing now
                f"{index} is not completely loaded ({docs} of {manifest.counts.chunks} chunks"
                f"{'' if blocked else ', no write block'}): it is not served",
                public=f"index {manifest.index_id} is not completely loaded into Elasticsearch",
            )
        facts = self._facts.pop(manifest.index_id, None)
        timings["check_index"] = time.perf_counter() - step
        from .elastic_search import ElasticsearchSearcher

        return ElasticsearchSearcher(self, index, manifest, facts)

    def retire(self, searcher: Any) -> None:
        """Nothing to give back: the index stays in Elasticsearch for the builder's gc."""
        searcher.close()

    def close(self) -> None:
        """Close the client's connections and stop its loop; a later call starts them again."""
        with self._lock:
            loop, client, self._loop, self._client = self._loop, self._client, None, None
        if loop is None or client is None:
            return
        try:
            loop.run(client.close(), self.timeout_s)
        except Exception:  # closing is best effort: the process is going away
            logger.debug("closing the Elasticsearch client failed", exc_info=True)
        finally:
            loop.close()
