"""A real PostgreSQL 16 with pgvector for the tests and benchmarks, from the ``pgserver`` wheel
(PostgreSQL and the pgvector extension built for this platform): a server in a folder of its
own, on a loopback port (where a test can put a proxy) and a Unix socket in the folder, stopped by
whoever started it. ``Postgres`` can stop and start its server, for the tests of a database that
goes away under a serving function. Users bring their own PostgreSQL. The fixtures are in
conftest (``postgres``, ``pg_schema``) and loaded_postgres (``loaded_pg``)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql


@dataclass
class Postgres:
    """One server on a loopback port: its connection string (the ``postgres`` superuser,
    trusted: the server takes connections from this machine only)."""

    server: Any  # pgserver.PostgresServer: the folder, and the system user it runs as (root)
    port: int
    settings: tuple[str, ...] = ()  # name=value, for the server's command line

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def execute(self, statement: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement in its own transaction; its rows, if it returns any."""
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cursor = conn.execute(statement, params)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []

    def stop(self) -> None:
        """Stop the server (fast: clients are disconnected)."""
        self._pg_ctl("-m", "fast", "stop")

    def start(self) -> None:
        """Start it on its folder and port: TCP on 127.0.0.1, the Unix socket in the folder."""
        folder = self.server.pgdata
        options = " ".join(
            [f"-h 127.0.0.1 -p {self.port} -k {folder}", *(f"-c {kv}" for kv in self.settings)]
        )
        self._pg_ctl("-o", options, "-l", str(folder / "log"), "start")

    def _pg_ctl(self, *args: str) -> None:
        from pgserver._commands import pg_ctl

        pg_ctl(["-w", *args], pgdata=self.server.pgdata, user=self.server.system_user, timeout=60)


def start_postgres(folder: Path, settings: tuple[str, ...] = ()) -> Postgres:
    """A new server in ``folder`` (about 2 s), with the vector extension created, and
    ``settings`` (``shared_buffers=1GB``...) on its command line. pgserver
    makes the folder (as another user when run as root, which PostgreSQL refuses) and starts it
    on a Unix socket; it is started again on a loopback port, where a test can put a proxy."""
    if "XDG_RUNTIME_DIR" not in os.environ:  # platformdirs warns without one of mode 0700
        runtime = folder.parent / "runtime"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.environ["XDG_RUNTIME_DIR"] = str(runtime)
    import pgserver

    server = pgserver.get_server(folder, cleanup_mode=None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    found = Postgres(server, port, settings)
    found.stop()
    found.start()
    found.execute("CREATE EXTENSION IF NOT EXISTS vector")
    return found


def count(postgres: Postgres, schema: str, table: str) -> int:
    """The rows of ``schema.table``."""
    with psycopg.connect(postgres.dsn) as conn:
        statement = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        row = conn.execute(statement).fetchone()
    assert row is not None
    return int(row[0])
