"""The PostgreSQL backend when things go wrong: the database stopped, unreachable, silent or slow
while serving; a loader killed in the middle of its load; a wrong embedding model; a missing
channel or index; gc and the channels' foreign key; settings that cannot work."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from functions.app import create_app
from functions.composition import compose
from functions.errors import ConfigurationError, NotReady, PostgresError
from functions.postgres import table_name
from functions.settings import Settings
from index_builder.postgres import Database
from index_builder.progress import Progress

from .artifacts import open_dir
from .conftest import write_corpus
from .loaded_postgres import LoadedPg, loaded_pg_fixture  # noqa: F401 - the fixture
from .postgres_server import Postgres, count
from .servers import Proxy, serve
from .test_elastic_serving import is_retryable_problem, ready

QUERY = {"query": "lakes", "mode": "retrieve"}


@pytest.fixture
def proxy(postgres: Postgres) -> Iterator[Proxy]:
    running = Proxy(f"127.0.0.1:{postgres.port}")
    yield running
    running.close()


def through(proxy: Proxy) -> str:
    """The connection string of the session's server, through ``proxy``."""
    return f"postgresql://postgres@{proxy.address}/postgres"


def test_postgres_unreachable_and_silent_are_503_and_504_then_it_recovers(
    loaded_pg: LoadedPg, proxy: Proxy
) -> None:
    settings = loaded_pg.settings(postgres_dsn=through(proxy), postgres_timeout_s=1.0)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert ready(client).status_code == 200
        assert client.post("/query", json=QUERY).status_code == 200

        proxy.set("refuse")
        down = client.post("/query", json=QUERY)
        assert is_retryable_problem(down, 503), down.text
        assert down.json()["title"] == "PostgreSQL unavailable"
        assert proxy.address not in down.text  # the client is told why, not where

        proxy.set("open")
        assert client.post("/query", json=QUERY).status_code == 200  # a pooled connection
        proxy.set("hang")  # drops it; the next connection is accepted and never answered
        started = time.monotonic()
        silent = client.post("/query", json=QUERY)
        assert silent.status_code in (503, 504), silent.text  # no connection, or cut off
        assert is_retryable_problem(silent, silent.status_code)
        assert time.monotonic() - started < 5
        assert client.get("/readyz").status_code == 200  # the index is still the one served

        proxy.set("open")
        again = client.post("/query", json=QUERY)
        assert again.status_code == 200, again.text
        assert again.headers["x-index-id"] == loaded_pg.index_id


def test_a_statement_past_the_timeout_is_cancelled_and_504(loaded_pg: LoadedPg) -> None:
    """A table locked by someone else: the search waits, the server cancels it at the timeout."""
    settings = loaded_pg.settings(postgres_timeout_s=0.5)
    table = f'"{loaded_pg.schema}"."{table_name(loaded_pg.index_id)}"'
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert ready(client).status_code == 200
        with psycopg.connect(loaded_pg.postgres.dsn) as locker:
            locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
            started = time.monotonic()
            slow = client.post("/query", json=QUERY)
            assert is_retryable_problem(slow, 504), slow.text
            assert slow.json()["title"] == "PostgreSQL timed out"
            assert time.monotonic() - started < 3
        assert client.post("/query", json=QUERY).status_code == 200


def test_the_database_stopped_mid_run_is_503_then_served_again(
    loaded_pg: LoadedPg, postgres: Postgres
) -> None:
    settings = loaded_pg.settings(postgres_timeout_s=1.0)
    with serve(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert ready(client).status_code == 200
        assert client.post("/query", json=QUERY).status_code == 200
        postgres.stop()
        try:
            for _ in range(3):  # the pooled connection's failure, then no connection at all
                down = client.post("/query", json=QUERY)
                assert is_retryable_problem(down, 503), down.text
        finally:
            postgres.start()
        deadline = time.monotonic() + 30
        while (again := client.post("/query", json=QUERY)).status_code != 200:
            assert time.monotonic() < deadline, again.text
            time.sleep(0.2)
        assert again.headers["x-index-id"] == loaded_pg.index_id


def test_postgres_down_at_the_cold_start_is_retried_then_the_reason_is_given(
    loaded_pg: LoadedPg, proxy: Proxy
) -> None:
    proxy.set("refuse")
    settings = loaded_pg.settings(
        postgres_dsn=through(proxy), postgres_timeout_s=0.5, startup_timeout_s=2.0
    )
    loader = compose(settings)
    with pytest.raises(NotReady):
        loader.load()
    assert loader.attempts > 1
    assert loader.reason is not None
    assert loader.reason.startswith("PostgreSQL unavailable: ")
    assert "127.0.0.1" in loader.reason  # the operator is told where
    loader.close()

    proxy.set("open")
    loader = compose(settings)
    assert loader.load().index_id == loaded_pg.index_id
    loader.close()


def test_a_wrong_embedding_model_is_refused_before_serving(loaded_pg: LoadedPg) -> None:
    loader = compose(loaded_pg.settings(embed_model="other-embed"))
    with pytest.raises(NotReady, match="not the model index"):
        loader.load()
    assert loader.attempts == 1  # not transient: never retried
    loader.close()


def test_a_missing_channel_or_index_is_named_and_not_retried(loaded_pg: LoadedPg) -> None:
    for name, said in (("nightly", "channel 'nightly'"), ("20200101-000000-00000000", "index")):
        loader = compose(loaded_pg.settings(index=name))
        with pytest.raises(NotReady, match=f"{said}.* is not in PostgreSQL"):
            loader.load()
        assert loader.attempts == 1
        loader.close()
    loader = compose(loaded_pg.settings(postgres_schema="never_loaded"))  # no tables at all
    with pytest.raises(NotReady, match="channel 'stable' is not in PostgreSQL"):
        loader.load()
    loader.close()


_LOADER = """
import sys
from pathlib import Path
from index_builder.postgres import Database
from index_builder.progress import Progress
from tests.artifacts import random_artifact

artifact, _ = random_artifact(Path(sys.argv[3]), n=int(sys.argv[4]), dim=64)
print(artifact.manifest.index_id, flush=True)
Database(sys.argv[1], schema=sys.argv[2]).load(
    artifact.manifest, "sha", lambda _: artifact, Progress(bars=False)
)
"""


@pytest.mark.parametrize("when", ["copying", "committing"])
def test_a_loader_killed_mid_load_leaves_nothing_visible(
    postgres: Postgres, pg_schema: str, tmp_path: Path, when: str
) -> None:
    """SIGKILL while the rows stream in (COPY under way), or once everything is written and the
    last statement waits (its facts' INSERT, held up by a lock): PostgreSQL rolls the whole
    transaction back; no row names the index, no table is left; a later load succeeds."""
    database = Database(postgres.dsn, schema=pg_schema)
    database.check()
    locker = psycopg.connect(postgres.dsn)
    if when == "committing":  # reads pass, the INSERT into indexes waits
        locker.execute(f'LOCK TABLE "{pg_schema}".indexes IN EXCLUSIVE MODE')
    rows = 60_000 if when == "copying" else 500
    script = textwrap.dedent(_LOADER)
    loader = subprocess.Popen(
        [sys.executable, "-c", script, postgres.dsn, pg_schema, str(tmp_path), str(rows)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    assert loader.stdout is not None
    index_id = loader.stdout.readline().strip()
    deadline = time.monotonic() + 120
    while True:
        assert loader.poll() is None, "the load ended before it was killed"
        if when == "copying":
            done = postgres.execute("SELECT tuples_processed FROM pg_stat_progress_copy")
            if done and 0 < done[0][0] < rows:
                break
        else:
            waiting = postgres.execute(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query LIKE 'INSERT INTO%%indexes%%'"
            )
            if waiting:
                break
        assert time.monotonic() < deadline
        time.sleep(0.01)
    loader.send_signal(signal.SIGKILL)
    loader.wait()
    locker.close()
    deadline = time.monotonic() + 30  # the server notices the closed connection, rolls back
    while postgres.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = 'knative-rag' AND pid <> %s",
        [database.backend_pid],
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    table = f'"{pg_schema}"."{table_name(index_id)}"'
    assert postgres.execute("SELECT to_regclass(%s)", [table]) == [(None,)]
    assert count(postgres, pg_schema, "indexes") == count(postgres, pg_schema, "columns") == 0
    artifact = open_dir(tmp_path)
    assert database.load(artifact.manifest, "sha", lambda _: artifact, Progress(bars=False))
    assert count(postgres, pg_schema, table_name(index_id)) == rows
    database.close()


def test_gc_drops_what_no_channel_names_and_the_key_guards_the_rest(loaded_pg: LoadedPg) -> None:
    first = loaded_pg.index_id
    second = loaded_pg.publish(write_corpus(loaded_pg.tmp_path / "second", documents=3))
    database = Database(loaded_pg.postgres.dsn, schema=loaded_pg.schema)
    names = {found.index_id: found.channels for found in database.indexes()}
    assert names == {second: ["stable"], first: []}
    with pytest.raises(PostgresError, match="move channel"):
        database.point("stable", "20200101-000000-00000000")  # not loaded: the key refuses
    assert database.collect({first}, dry_run=False, incomplete_after=None) == []  # kept
    assert database.collect(set(), dry_run=True, incomplete_after=None) == [
        database.index_name(first)
    ]
    assert database.collect(set(), dry_run=False, incomplete_after=None) == [
        database.index_name(first)
    ]
    assert [found.index_id for found in database.indexes()] == [second]
    gone = f'"{loaded_pg.schema}"."{table_name(first)}"'
    assert loaded_pg.postgres.execute("SELECT to_regclass(%s)", [gone]) == [(None,)]
    loader = compose(loaded_pg.settings(index=first, startup_timeout_s=1.0))
    with pytest.raises(NotReady, match="is not in PostgreSQL"):
        loader.load()
    loader.close()
    database.close()


@pytest.mark.parametrize(
    ("values", "said"),
    [
        (
            {"backend": "postgres", "retrieval": "hybrid"},
            "RAG_RETRIEVAL=hybrid needs RAG_BACKEND=elasticsearch",
        ),
    ],
)
def test_settings_that_cannot_work_are_refused_at_once(values: dict[str, str], said: str) -> None:
    with pytest.raises(ConfigurationError, match=said):
        compose(Settings(**values))  # type: ignore[arg-type]


def test_list_and_gc_on_the_command_line_cover_postgresql(loaded_pg: LoadedPg) -> None:
    first = loaded_pg.index_id
    second = loaded_pg.publish(write_corpus(loaded_pg.tmp_path / "second", documents=3))
    assert loaded_pg.cli("list") == 0
    listed = loaded_pg.capsys.readouterr().out
    assert f"channel stable           -> {second}" in listed
    assert "row -> " + second in listed
    assert f"index   {first}" in listed
    assert "postgresql: " in listed
    assert loaded_pg.cli("gc", "--keep", "0") == 0
    out = loaded_pg.capsys.readouterr().out
    assert f"deleted {first}" in out  # the store's copy: no channel names it
    assert f"deleted postgresql {loaded_pg.schema}.{table_name(first)}" in out
    assert second not in out
    database = Database(loaded_pg.postgres.dsn, schema=loaded_pg.schema)
    assert [found.index_id for found in database.indexes()] == [second]
    database.close()


def test_the_password_appears_in_no_message(loaded_pg: LoadedPg, proxy: Proxy) -> None:
    """The server trusts local connections, so any password works: the same connection string
    serves, and when PostgreSQL cannot be reached, neither the reason nor the logs name it."""
    password = "pw-7f3a9c2e51"
    dsn = f"postgresql://postgres:{password}@{proxy.address}/postgres"
    settings = loaded_pg.settings(postgres_dsn=dsn, postgres_timeout_s=0.5, startup_timeout_s=1)
    loader = compose(settings)
    assert loader.load().index_id == loaded_pg.index_id
    loader.close()
    proxy.set("refuse")
    loader = compose(settings)
    with pytest.raises(NotReady) as refused:
        loader.load()
    loader.close()
    assert loader.reason is not None
    assert password not in loader.reason
    assert password not in str(refused.value)
    assert password not in repr(settings)
