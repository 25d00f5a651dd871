"""Published indexes loaded into PostgreSQL with pgvector, and channels as rows pointing at them.

The layout is ``functions.postgres``'s (one ``data_<index id>`` table per index in LlamaIndex
``PGVectorStore``'s columns, and the ``indexes``, ``columns`` and ``channels`` tables). An index
is loaded in one transaction: its table is created, its rows copied (binary COPY: no embedding,
no JSON of vectors), its HNSW index built with the operator class of its vectors (inner product
for the unit-length vectors artifacts hold: the cosine, without a norm per comparison; cosine
otherwise), its rows counted against the manifest, and its facts inserted; then it commits. A
loader that dies, or is killed, at any point before that commit leaves nothing: PostgreSQL rolls
the whole transaction back, table included, and no reader ever sees a part of it. Two loaders of
one index serialise on an advisory lock; the second finds it loaded.

A channel's row is moved in one statement after the store's channel moved (``publish`` orders
that), and only to a loaded index: its foreign key refuses any other, so a channel never names a
table that is not whole; gc deletes an index's row and drops its table in one transaction, and
never one a channel names (the same key). This is the only module that writes to PostgreSQL;
what it raises for PostgreSQL's failures is ``PostgresError`` (``functions.errors``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import node_to_metadata_dict
from psycopg import sql
from psycopg.types.json import Jsonb

from functions.artifact import Artifact, Manifest
from functions.backends import MANIFEST_FACTS
from functions.catalog import channel_key
from functions.errors import PostgresError
from functions.filters import as_llamaindex_sees
from functions.pg_filters import DOCUMENT_KEY
from functions.postgres import describe_target, failures, table_name

from .progress import Phase, Progress

__all__ = ["HNSW", "Database", "LoadedTable", "loaded"]

logger = logging.getLogger(__name__)

# pgvector's defaults (m 16, ef_construction 64) miss too much: on 10k uniform random 768-d
# vectors (the hard case) recall@10 is 0.49 at ef_search 100 and 0.89 at 400; with m 32 and
# ef_construction 200, 0.76 and 0.995, for 2.7 times the build time (bench/postgres_recall.py).
HNSW = {"m": 32, "ef_construction": 200}
# maintenance_work_mem of the load's transaction: pgvector builds the HNSW graph in memory up to
# it, then goes on on disk, slower. 100k x 768 at m 32 loaded in 511 s here (bench/backends.py);
# with 2 GB (two parallel workers on these two cores) in 548 s (bench/postgres_recall.py).
_MAINTENANCE_MEMORY = "512MB"
_COPY_PROGRESS = 1000


@dataclass(frozen=True)
class LoadedTable:
    """One loaded index: its table, chunks, the channels whose rows name it, when it was loaded."""

    index_id: str
    name: str
    docs: int
    complete: bool
    channels: list[str]
    created: datetime
    manifest_sha256: str | None


class Database:
    """A PostgreSQL database that published indexes are loaded into, channels as rows."""

    label = "PostgreSQL"

    def __init__(
        self, dsn: str = "", *, schema: str = "knative_rag", timeout_s: float = 30.0
    ) -> None:
        self.target = describe_target(dsn)
        self.schema, self.timeout_s = schema, timeout_s
        with self._errors("connect"):
            self._conn = psycopg.connect(
                dsn, connect_timeout=max(1, round(timeout_s)), application_name="knative-rag"
            )

    def close(self) -> None:
        """Close the connection."""
        self._conn.close()

    @property
    def backend_pid(self) -> int:
        """The server process of this connection (pg_stat_activity's pid)."""
        return int(self._conn.info.backend_pid)

    def _name(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def index_name(self, index_id: str) -> str:
        """The table of a published index, schema-qualified."""
        return f"{self.schema}.{table_name(index_id)}"

    def alias(self, channel: str) -> str:
        """A channel's row, as messages name it."""
        channel_key(channel)  # refuses what is no channel name
        return f"{self.schema}.channels[{channel}]"

    def check(self) -> None:
        """Fail now, with the reason, when the database cannot be used: pgvector missing, or the
        schema not creatable. Creates the schema and its three tables where they are missing."""
        statements = [
            "CREATE EXTENSION IF NOT EXISTS vector",
            "CREATE SCHEMA IF NOT EXISTS {schema}",
            "CREATE TABLE IF NOT EXISTS {indexes} (index_id text PRIMARY KEY, "
            "manifest jsonb NOT NULL, manifest_sha256 text NOT NULL, complete boolean NOT NULL, "
            "chunks bigint NOT NULL, loaded_at timestamptz NOT NULL DEFAULT now())",
            "CREATE TABLE IF NOT EXISTS {columns} (index_id text NOT NULL REFERENCES {indexes} "
            "ON DELETE CASCADE, key text NOT NULL, values jsonb NOT NULL, "
            "PRIMARY KEY (index_id, key))",
            "CREATE TABLE IF NOT EXISTS {channels} (channel text PRIMARY KEY, "
            "index_id text NOT NULL REFERENCES {indexes}, generation bigint NOT NULL DEFAULT 1, "
            "moved_at timestamptz NOT NULL DEFAULT now())",
        ]
        names = {
            "schema": sql.Identifier(self.schema),
            **{name: self._name(name) for name in ("indexes", "columns", "channels")},
        }
        for attempt in range(2):  # two builders creating the schema at once: one loses a race
            try:
                with (
                    self._errors(f"create schema {self.schema}"),
                    self._conn.transaction(),
                    self._conn.cursor() as cur,
                ):
                    # Only what is missing: PostgreSQL checks the privilege to create before
                    # IF NOT EXISTS, and a builder role may own its schema without CREATE on the
                    # database (knative/components/postgres) or on extensions.
                    found = cur.execute(
                        "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'vector'), "
                        "EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = %s), "
                        "to_regclass(%s) IS NOT NULL, to_regclass(%s) IS NOT NULL, "
                        "to_regclass(%s) IS NOT NULL",
                        [
                            self.schema,
                            *(f'"{self.schema}"."{t}"' for t in ("indexes", "columns", "channels")),
                        ],
                    ).fetchone()
                    for statement, there in zip(statements, found or (), strict=True):
                        if not there:
                            cur.execute(sql.SQL(statement).format(**names))
                return
            except PostgresError as exc:
                if attempt or not isinstance(exc.__cause__, psycopg.errors.UniqueViolation):
                    raise

    def load(
        self,
        manifest: Manifest,
        manifest_sha256: str,
        artifact: Callable[[Path], Artifact],
        progress: Progress,
    ) -> bool:
        """Load a published index unless it is loaded already; False when it was.

        ``artifact`` opens the index's files (downloading them into the folder it is given) only
        when they are needed. Everything happens in one transaction: whatever fails, or kills
        this process, leaves nothing behind.
        """
        self.check()
        index_id = manifest.index_id
        table = self._name(table_name(index_id))
        with progress.phase("postgres", manifest.counts.chunks, "chunks") as phase:
            with self._errors(f"load {self.index_name(index_id)}"), self._conn.transaction():
                cur = self._conn.cursor()
                # One loader per index at a time; the second finds the first's commit.
                cur.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"knative-rag {index_id}"]
                )
                found = cur.execute(
                    sql.SQL("SELECT manifest_sha256 FROM {} WHERE index_id = %s").format(
                        self._name("indexes")
                    ),
                    [index_id],
                ).fetchone()
                if found is not None:
                    if found[0] != manifest_sha256:
                        raise PostgresError(
                            f"{self.index_name(index_id)} holds another manifest of index "
                            f"{index_id} (sha256 {found[0]}): not loaded again"
                        )
                    phase.notes.append("already loaded")
                    return False
                with tempfile.TemporaryDirectory(prefix="rag-postgres-") as tmp:
                    opened = artifact(Path(tmp))
                    self._create(cur, table, manifest)
                    self._copy(cur, table, opened, phase)
                    self._index(cur, table, manifest)
                    self._record(cur, table, manifest, manifest_sha256, opened)
            phase.notes.append(self.index_name(index_id))
        return True

    def _create(self, cur: psycopg.Cursor[Any], table: sql.Identifier, manifest: Manifest) -> None:
        cur.execute(
            sql.SQL(
                "CREATE TABLE {} (id bigint PRIMARY KEY, text varchar NOT NULL, metadata_ jsonb, "
                "node_id varchar NOT NULL, embedding vector({}) NOT NULL, filter_ jsonb NOT NULL)"
            ).format(table, sql.Literal(manifest.embedding.dim))
        )
        # In the row, not in TOAST: a 768-d vector is 3 KB, past the 2 KB at which PostgreSQL
        # moves a value out of line, and an exact (filtered) search would fetch every vector
        # from the TOAST table. Floats do not compress anyway; the text and metadata still go.
        # filter_: metadata_ without the node's JSON (``_node_content``), what filters read:
        # small, kept in the row (compressed at most), so a filtered scan parses a few hundred
        # bytes a chunk instead of fetching and decompressing the whole node.
        cur.execute(
            sql.SQL(
                "ALTER TABLE {} ALTER COLUMN embedding SET STORAGE PLAIN, "
                "ALTER COLUMN filter_ SET STORAGE MAIN"
            ).format(table)
        )

    def _copy(
        self, cur: psycopg.Cursor[Any], table: sql.Identifier, artifact: Artifact, phase: Phase
    ) -> None:
        """Every row, in one binary COPY: what ``PGVectorStore.add`` would write for the node
        the artifact store returns for each chunk, and its vector as pgvector's binary form."""
        import numpy as np

        statement = sql.SQL(
            "COPY {} (id, text, metadata_, node_id, embedding, filter_) FROM STDIN "
            "WITH (FORMAT BINARY)"
        ).format(table)
        vectors = artifact.vectors
        dim = vectors.shape[1]
        header = np.array([dim, 0], dtype=">u2").tobytes()
        with cur.copy(statement) as copy:
            copy.set_types(["int8", "varchar", "jsonb", "varchar", "bytea", "jsonb"])
            for row in range(len(artifact)):
                record = artifact.record(row)
                node = TextNode(
                    id_=record.id,
                    text=record.text,
                    metadata=record.metadata,
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=record.doc_id)},
                )
                metadata = as_llamaindex_sees(node_to_metadata_dict(node, remove_text=True))
                vector = header + np.asarray(vectors[row], dtype=">f4").tobytes()
                filtered = {k: v for k, v in metadata.items() if k != "_node_content"}
                copy.write_row(
                    [row, record.text, Jsonb(metadata), record.id, vector, Jsonb(filtered)]
                )
                if (row + 1) % _COPY_PROGRESS == 0:
                    phase.update(_COPY_PROGRESS)
        phase.update(len(artifact) % _COPY_PROGRESS)

    def _index(self, cur: psycopg.Cursor[Any], table: sql.Identifier, manifest: Manifest) -> None:
        ops = "vector_ip_ops" if manifest.embedding.normalized else "vector_cosine_ops"
        cur.execute("SELECT set_config('maintenance_work_mem', %s, true)", [_MAINTENANCE_MEMORY])
        cur.execute(
            sql.SQL(
                "CREATE INDEX ON {} USING hnsw (embedding {}) WITH (m = {}, ef_construction = {})"
            ).format(
                table, sql.SQL(ops), sql.Literal(HNSW["m"]), sql.Literal(HNSW["ef_construction"])
            )
        )
        cur.execute(sql.SQL("CREATE INDEX ON {} (node_id)").format(table))
        cur.execute(sql.SQL("CREATE INDEX ON {} ((filter_ ->> 'ref_doc_id'))").format(table))
        cur.execute(sql.SQL("ANALYZE {}").format(table))

    def _record(
        self,
        cur: psycopg.Cursor[Any],
        table: sql.Identifier,
        manifest: Manifest,
        sha256: str,
        artifact: Artifact,
    ) -> None:
        """Count the rows against the manifest; then the facts that make the index visible."""
        rows = cur.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        count = rows[0] if rows else 0
        if count != manifest.counts.chunks:
            raise PostgresError(
                f"{self.index_name(manifest.index_id)} holds {count} rows after its load, the "
                f"manifest says {manifest.counts.chunks}: nothing was committed"
            )
        facts = manifest.model_dump(mode="json", include=set(MANIFEST_FACTS))
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (index_id, manifest, manifest_sha256, complete, chunks) "
                "VALUES (%s, %s, %s, %s, %s)"
            ).format(self._name("indexes")),
            [manifest.index_id, Jsonb(facts), sha256, artifact.complete_columns, count],
        )
        documents = sorted({doc or "None" for doc in artifact.ids()[1]})
        values = {key: as_llamaindex_sees(v) for key, v in artifact.columns.items()}
        values[DOCUMENT_KEY] = documents
        cur.executemany(
            sql.SQL("INSERT INTO {} (index_id, key, values) VALUES (%s, %s, %s)").format(
                self._name("columns")
            ),
            [(manifest.index_id, key, Jsonb(v)) for key, v in values.items()],
        )

    def point(self, channel: str, index_id: str) -> None:
        """Move the channel's row to the index in one statement; only to a loaded index (the
        foreign key refuses any other: the row stays where it is)."""
        channel_key(channel)
        with self._errors(f"move channel {channel}"), self._conn.transaction():
            self._conn.execute(
                sql.SQL(
                    "INSERT INTO {channels} AS c (channel, index_id) VALUES (%s, %s) "
                    "ON CONFLICT (channel) DO UPDATE SET index_id = EXCLUDED.index_id, "
                    "generation = c.generation + 1, moved_at = now() "
                    "WHERE c.index_id IS DISTINCT FROM EXCLUDED.index_id"
                ).format(channels=self._name("channels")),
                [channel, index_id],
            )

    def indexes(self) -> list[LoadedTable]:
        """Every loaded index, newest id first."""
        query = sql.SQL(
            "SELECT i.index_id, i.chunks, i.loaded_at, i.manifest_sha256, "
            "coalesce(array_agg(c.channel ORDER BY c.channel) "
            "FILTER (WHERE c.channel IS NOT NULL), '{{}}') "
            "FROM {indexes} i LEFT JOIN {channels} c ON c.index_id = i.index_id "
            "GROUP BY i.index_id ORDER BY i.index_id DESC"
        ).format(indexes=self._name("indexes"), channels=self._name("channels"))
        with self._errors(f"list {self.schema}.indexes"), self._conn.transaction():
            if not self._exists("indexes"):
                return []
            rows = self._conn.execute(query).fetchall()
        return [
            LoadedTable(
                index_id=index_id,
                name=self.index_name(index_id),
                docs=chunks,
                complete=True,
                channels=list(channels),
                created=loaded_at.astimezone(UTC),
                manifest_sha256=sha256,
            )
            for index_id, chunks, loaded_at, sha256, channels in rows
        ]

    def collect(self, kept: set[str], *, dry_run: bool, incomplete_after: timedelta) -> list[str]:
        """Drop the tables of the indexes no channel names and ``kept`` lacks, each with its row
        in one transaction. (No load is ever left incomplete: ``incomplete_after`` has nothing
        to wait for.) Returns their tables."""
        doomed = [
            found for found in self.indexes() if not found.channels and found.index_id not in kept
        ]
        if dry_run:
            return [found.name for found in doomed]
        dropped = []
        for found in doomed:
            with self._errors(f"drop {found.name}"), self._conn.transaction():
                gone = self._conn.execute(
                    sql.SQL(
                        "DELETE FROM {indexes} i WHERE index_id = %s AND NOT EXISTS "
                        "(SELECT 1 FROM {channels} c WHERE c.index_id = i.index_id) "
                        "RETURNING index_id"
                    ).format(indexes=self._name("indexes"), channels=self._name("channels")),
                    [found.index_id],
                ).fetchone()
                if gone is None:  # a channel moved to it meanwhile
                    continue
                self._conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        self._name(table_name(found.index_id))
                    )
                )
            dropped.append(found.name)
        return dropped

    def _exists(self, name: str) -> bool:
        row = self._conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", [f'"{self.schema}"."{name}"']
        ).fetchone()
        return bool(row and row[0])

    def _errors(self, doing: str) -> Any:
        return failures(self.target, doing, self.timeout_s)


def loaded(found: LoadedTable | None) -> str:
    """An index's state in PostgreSQL, for ``list``."""
    if found is None:
        return "not loaded"
    channels = f" [{', '.join(found.channels)}]" if found.channels else ""
    return f"{found.docs:,} rows{channels}"
