"""The PostgreSQL backend: the function serves an index the builder loaded, downloading none.

In the schema ``RAG_POSTGRES_SCHEMA`` (``index_builder.postgres`` creates and fills it):

    data_<index id>   one table per index, LlamaIndex ``PGVectorStore``'s layout (id, text,
                      metadata_ JSONB from ``node_to_metadata_dict``, node_id, embedding
                      vector(dim)) with an HNSW index on the embeddings; id is the artifact's
                      row; filter_ is metadata_ without the node's JSON, what filters read
    indexes           one row per loaded index: its manifest's facts, the manifest's sha256,
                      whether its metadata columns are complete; written in the same transaction
                      as the table, so an index is either loaded whole or absent
    columns           every distinct value of each metadata key per index (the artifact's
                      ``columns.json``, and the document ids): what filters are evaluated on
    channels          channel -> index id, moved by the builder after the store's channel

A pinned index id names its row in ``indexes``; a channel, the row its pointer names now (one
query). The embedding model is checked against the stored probe as for an artifact.

Searches (``pg_search``) are one SQL statement on a pooled connection (``psycopg_pool``, at most
``RAG_POSTGRES_POOL_SIZE``): unfiltered ones walk the HNSW index (``hnsw.ef_search``
``RAG_POSTGRES_EF_SEARCH``, at least top k); filtered and id-restricted ones are exact (index
scans off: pgvector 0.6 filters after the graph walk and would return fewer than k), with the
filters ``pg_filters`` translates. Scores are cosine similarities, as the artifact's. No free
connection within ``RAG_POSTGRES_TIMEOUT_S``, or a server that cannot be reached, is a 503; a
statement past it is cancelled by the server, and a server that does not answer at all is cut
off a second later, both 504; all with Retry-After (``run``). Credentials come from
``RAG_POSTGRES_DSN`` or libpq's own variables and appear in no message.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from .artifact import Manifest
from .backends import Located, manifest_of
from .catalog import channel_key, is_index_id
from .errors import (
    ConfigurationError,
    ObjectNotFound,
    PostgresError,
    PostgresTimeout,
    PostgresUnavailable,
)

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql
    from psycopg_pool import ConnectionPool

    from .pg_search import PostgresSearcher
    from .settings import Settings

__all__ = [
    "PostgresBackend",
    "describe_target",
    "failures",
    "table_name",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SLACK_S = 1.0  # beyond the statement timeout, before a silent server is cut off


def table_name(index_id: str) -> str:
    """The table of an index: ``data_<id>`` with '-' as '_', which ``PGVectorStore`` opens with
    ``table_name=<id with '_'>`` (it prefixes ``data_``)."""
    if not is_index_id(index_id):
        raise ConfigurationError(f"{index_id!r} is not an index id")
    return "data_" + index_id.replace("-", "_")


def describe_target(dsn: str) -> str:
    """Where a connection string points, for messages: host, port and database; never the
    user's password (libpq's variables fill what the string leaves out)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(dsn)
    except Exception:  # a malformed string: connecting says why, without quoting it
        return "PostgreSQL"
    host = str(parts.get("host") or os.environ.get("PGHOST") or "localhost")
    if host.startswith("/"):
        host = f"socket {host}"
    port = parts.get("port") or os.environ.get("PGPORT") or "5432"
    database = parts.get("dbname") or os.environ.get("PGDATABASE") or "(default database)"
    return f"PostgreSQL at {host}:{port}/{database}"


@contextmanager
def failures(target: str, doing: str, timeout_s: float) -> Iterator[None]:
    """Translate psycopg's errors: unreachable, out of connections or shutting down
    (``PostgresUnavailable``, 503), a statement cancelled by its timeout (``PostgresTimeout``,
    504), anything else (``PostgresError``, 502), each naming what was being done."""
    import psycopg
    from psycopg import errors as pg
    from psycopg_pool import PoolTimeout

    try:
        yield
    except PoolTimeout as exc:
        raise PostgresUnavailable(
            f"{target}: no connection within {timeout_s:g} s to {doing} (unreachable, or every "
            "pooled connection busy)",
            public="PostgreSQL is unavailable",
        ) from exc
    except pg.QueryCanceled as exc:
        raise PostgresTimeout(
            f"{target} did not answer within {timeout_s:g} s while trying to {doing}",
            public="PostgreSQL timed out",
        ) from exc
    except (
        pg.AdminShutdown,
        pg.CannotConnectNow,
        pg.TooManyConnections,
        pg.UndefinedTable,
    ) as exc:
        raise PostgresUnavailable(
            f"{target} could not {doing}: {exc.diag.message_primary or exc}",
            public="PostgreSQL is unavailable",
        ) from exc
    except psycopg.OperationalError as exc:  # a connection lost or refused
        raise PostgresUnavailable(
            f"{target} could not {doing}: {_first_line(exc)}", public="PostgreSQL is unavailable"
        ) from exc
    except psycopg.Error as exc:
        raise PostgresError(
            f"{target} refused to {doing}: {_first_line(exc)}", public="PostgreSQL error"
        ) from exc


def _shutdown(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down under a statement that waits on it: the wait ends
    with an error, and the pool discards the connection."""
    try:
        fd = conn.fileno()
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed meanwhile: nothing waits on it
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


class PostgresBackend:
    """Indexes loaded into PostgreSQL: located by the channels table or by id, described by
    their row in ``indexes``, searched with SQL."""

    name = "postgres"

    def __init__(
        self,
        dsn: str = "",
        *,
        schema: str = "knative_rag",
        pool_size: int = 4,
        timeout_s: float = 5.0,
        ef_search: int = 500,
    ) -> None:
        self.target = describe_target(dsn)
        self.schema, self.pool_size, self.timeout_s = schema, pool_size, timeout_s
        self.ef_search = ef_search
        self._dsn = dsn
        self._pool: ConnectionPool | None = None
        self._lock = threading.Lock()
        self._found: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> PostgresBackend:
        """The backend ``RAG_POSTGRES_*`` (or libpq's variables) describe."""
        dsn = settings.postgres_dsn.get_secret_value() if settings.postgres_dsn else ""
        return cls(
            dsn,
            schema=settings.postgres_schema,
            pool_size=settings.postgres_pool_size,
            timeout_s=settings.postgres_timeout_s,
            ef_search=settings.postgres_ef_search,
        )

    def _started(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                from psycopg_pool import ConnectionPool

                statement_ms = max(1, round(self.timeout_s * 1000))
                self._pool = ConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self.pool_size,
                    timeout=self.timeout_s,
                    name="knative-rag",
                    kwargs={
                        "autocommit": True,
                        "connect_timeout": max(1, round(self.timeout_s)),
                        "application_name": "knative-rag",
                        # Every statement, searches included, is cancelled by the server past
                        # the timeout; hnsw.ef_search is read once pgvector is loaded.
                        "options": f"-c statement_timeout={statement_ms} "
                        f"-c hnsw.ef_search={self.ef_search}",
                    },
                    open=True,
                )
            return self._pool

    def run(self, doing: str, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``work`` on a pooled connection (autocommit: a transaction only where ``work`` opens
        one), its failures translated (``failures``). A pooled connection may have died while
        idle (the server restarted, a proxy dropped it): work that fails on one for that
        reason runs once more, on a fresh one (every statement here reads). The server cancels
        a statement past the timeout; a server that does not answer at all (a network gone
        silent) is cut off by a watchdog shortly after (``SLACK_S``): both are
        ``PostgresTimeout``."""
        import psycopg

        pool = self._started()
        for attempt in (1, 2):
            with failures(self.target, doing, self.timeout_s), pool.connection() as conn:
                fired = threading.Event()

                def cut(
                    conn: psycopg.Connection[Any] = conn, fired: threading.Event = fired
                ) -> None:
                    fired.set()
                    _shutdown(conn)

                watchdog = threading.Timer(self.timeout_s + SLACK_S, cut)
                watchdog.daemon = True
                watchdog.start()
                try:
                    return work(conn)
                except psycopg.OperationalError as exc:
                    if fired.is_set():
                        raise PostgresTimeout(
                            f"{self.target} did not answer within "
                            f"{self.timeout_s + SLACK_S:g} s while trying to {doing}: the "
                            "connection was closed",
                            public="PostgreSQL timed out",
                        ) from exc
                    if attempt == 1 and conn.broken:
                        logger.info("%s: a pooled connection was lost (%s); once more", doing, exc)
                        continue
                    raise
                finally:
                    watchdog.cancel()
        raise AssertionError("unreachable")  # pragma: no cover

    def table(self, index_id: str) -> sql.Identifier:
        """The schema-qualified table of an index."""
        from psycopg import sql

        return sql.Identifier(self.schema, table_name(index_id))

    def locate(self, name: str) -> Located:
        """The row ``name`` names: an index id's own, or the one its channel's pointer names."""
        from psycopg import sql

        if is_index_id(name):
            query = sql.SQL(
                "SELECT index_id, manifest, manifest_sha256, complete FROM {} WHERE index_id = %s"
            ).format(sql.Identifier(self.schema, "indexes"))
        else:
            channel_key(name)  # refuses what is no channel name
            query = sql.SQL(
                "SELECT i.index_id, i.manifest, i.manifest_sha256, i.complete FROM {} c "
                "JOIN {} i ON i.index_id = c.index_id WHERE c.channel = %s"
            ).format(
                sql.Identifier(self.schema, "channels"), sql.Identifier(self.schema, "indexes")
            )

        def read(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
            from psycopg import errors as pg

            try:
                return conn.execute(query, [name]).fetchone()
            except pg.UndefinedTable:  # nothing was ever loaded here
                return None

        row = self.run(f"read {name}", read)
        if row is None:
            what = f"index {name}" if is_index_id(name) else f"channel {name!r}"
            raise ObjectNotFound(
                f"{what} is not in {self.target} (schema {self.schema}): load it with the "
                "builder's load command",
                public=f"{what} is not in PostgreSQL",
            )
        index_id, meta, sha256, complete = row
        if meta.get("index_id") != index_id:
            raise PostgresError(f"{self.schema}.indexes row {index_id} describes another index")
        manifest = manifest_of(meta)
        self._found[index_id] = {"complete": bool(complete)}
        return Located(index_id, sha256, manifest)

    def describe(self, name: str, located: Located) -> Manifest:
        """The manifest ``locate`` read from the ``indexes`` row."""
        assert located.manifest is not None
        return located.manifest

    def admit(self, manifest: Manifest) -> None:
        """Nothing is downloaded: any size is served."""

    def open(self, manifest: Manifest, timings: dict[str, float]) -> PostgresSearcher:
        """Check that the index's table is there (its row and table commit together)."""
        step = time.perf_counter()
        name = table_name(manifest.index_id)
        exists = self.run(
            f"find {name}",
            lambda conn: conn.execute(
                "SELECT to_regclass(%s) IS NOT NULL", [f'"{self.schema}"."{name}"']
            ).fetchone(),
        )
        if not exists or not exists[0]:
            raise PostgresUnavailable(  # transient: dropped meanwhile, the pointer moves next
                f"{self.schema}.{name} is gone from {self.target}: it is not served",
                public=f"index {manifest.index_id} is not in PostgreSQL",
            )
        found = self._found.pop(manifest.index_id, {"complete": True})
        timings["check_index"] = time.perf_counter() - step
        from .pg_search import PostgresSearcher

        return PostgresSearcher(self, manifest, complete_columns=found["complete"])

    def retire(self, searcher: Any) -> None:
        """Nothing to give back: the table stays for the builder's gc."""
        searcher.close()

    def close(self) -> None:
        """Close the pool's connections; a later call opens it again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
