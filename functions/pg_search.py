"""Searching one index in PostgreSQL: retrieve mode's searcher (``PostgresSearcher``), the rows
both paths read (``rows``: retrieve mode, and LlamaIndex's store in ``pg_store``), and a row read
back as the artifact's record. The statements run on the backend's pool (``postgres``).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .artifact import Manifest, NodeRecord
from .backends import record_of
from .filters import FilterGroup
from .pg_filters import pg_filter
from .postgres import table_name
from .search import Hit, checked_query

if TYPE_CHECKING:
    import psycopg

    from .postgres import PostgresBackend

__all__ = ["PostgresSearcher"]

_EF_SEARCH_MAX = 1000  # pgvector's limit; a larger top k is answered exactly


class PostgresSearcher:
    """One index's table. Retrieve mode searches with SQL and imports no LlamaIndex; answer mode
    and chat get LlamaIndex's ``PGVectorStore`` over the same searches (``vector_store``)."""

    def __init__(
        self, backend: PostgresBackend, manifest: Manifest, *, complete_columns: bool
    ) -> None:
        self._backend, self._manifest = backend, manifest
        self.complete = complete_columns
        self.schema = backend.schema
        self._table = backend.table(manifest.index_id)
        self.normalized = manifest.embedding.normalized
        self._values: dict[str, list[Any] | None] = {}
        self._lock = threading.Lock()
        self._store: Any = None

    @property
    def manifest(self) -> Manifest:
        """The index's manifest, from its ``indexes`` row."""
        return self._manifest

    def __len__(self) -> int:
        return self._manifest.counts.chunks

    def values(self, key: str) -> list[Any] | None:
        """A metadata key's distinct values (``pg_filters.Columns``), read once per key."""
        with self._lock:
            if key in self._values:
                return self._values[key]
        from psycopg import sql

        query = sql.SQL("SELECT values FROM {} WHERE index_id = %s AND key = %s").format(
            sql.Identifier(self._backend.schema, "columns")
        )
        row = self._backend.run(
            f"read the metadata values of {key!r}",
            lambda conn: conn.execute(query, [self._manifest.index_id, key]).fetchone(),
        )
        found = None if row is None else list(row[0])
        with self._lock:
            self._values[key] = found
        return found

    def search(
        self,
        query: npt.NDArray[np.float32],
        top_k: int,
        where: FilterGroup | None = None,
        *,
        text: str | None = None,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> list[Hit]:
        """The ``top_k`` chunks most similar to ``query`` that ``where`` and the ids admit
        (``text``, the question, is not read: retrieval is dense)."""
        rows = self.rows(query, top_k, where, node_ids=node_ids, doc_ids=doc_ids)
        return [Hit(row[0], row[4], _record(row)) for row in rows]

    def rows(
        self,
        query: Any,
        top_k: int,
        where: FilterGroup | None = None,
        *,
        node_ids: Collection[str] | None = None,
        doc_ids: Collection[str] | None = None,
    ) -> list[tuple[int, str, str, dict[str, Any], float]]:
        """The search's rows as stored: (row, node id, text, metadata_, cosine similarity)."""
        from psycopg import sql

        exact, norm = checked_query(query, self._manifest.embedding.dim, top_k)
        condition, params = pg_filter(where, self, node_ids=node_ids, doc_ids=doc_ids)
        if condition == "FALSE":
            return []
        unit = exact / norm
        vector = "[" + ",".join(repr(float(x)) for x in unit.astype(np.float32)) + "]"
        operator = "<#>" if self.normalized else "<=>"
        statement = sql.SQL(
            "SELECT id, node_id, text, metadata_, embedding {op} %s::vector AS distance "
            "FROM {table} WHERE {where} ORDER BY embedding {op} %s::vector LIMIT %s"
        ).format(op=sql.SQL(operator), table=self._table, where=sql.SQL(condition))
        exhaustive = condition != "TRUE" or top_k > _EF_SEARCH_MAX
        ef_search = self._backend.ef_search

        def search(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
            arguments = [vector, *params, vector, top_k]
            if not exhaustive and top_k <= ef_search:  # the connection's own ef_search
                return conn.execute(statement, arguments).fetchall()  # one round trip
            with conn.transaction():  # what set_config sets holds until its end
                if exhaustive:  # the HNSW walk filters after the fact: exact instead
                    conn.execute("SELECT set_config('enable_indexscan', 'off', true)")
                else:
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true)", [str(top_k)])
                return conn.execute(statement, arguments).fetchall()

        found = self._backend.run(f"search {table_name(self._manifest.index_id)}", search)
        return [
            (int(row[0]), str(row[1]), row[2], row[3], self._similarity(float(row[4])))
            for row in found
        ]

    def _similarity(self, distance: float) -> float:
        """pgvector's distance as a cosine similarity: ``<#>`` is the negative inner product
        (unit vectors: the cosine), ``<=>`` one minus the cosine."""
        return -distance if self.normalized else 1.0 - distance

    def vector_store(self) -> Any:
        """LlamaIndex's ``PGVectorStore`` on this table (imports LlamaIndex)."""
        with self._lock:
            if self._store is None:
                from .pg_store import ServingStore

                self._store = ServingStore(self)
            return self._store

    def close(self) -> None:
        """Searches already started finish; the pool is the backend's, shared."""


def _record(row: tuple[Any, ...]) -> NodeRecord:
    """A row as the artifact's record."""
    _, node_id, text, metadata, _ = row
    return record_of(str(node_id), text, metadata["_node_content"])
