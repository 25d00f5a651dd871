"""``pg_filter`` against the real PostgreSQL: the chunks a translated filter admits there are the
chunks the artifact's ``Filters`` admit.

Each generated case is written as an artifact (tests/filter_cases.py), loaded by the builder's
``Database`` (the rows' JSONB metadata and the distinct values it stores beside them) and asked
each of its queries as ``SELECT node_id ... WHERE <pg_filter>``, through the function's own
searcher (which reads the stored values back); sets compared (ranking is tested elsewhere). A
query passes when both give the same chunks or both refuse; PostgreSQL may refuse alone only in
an id-restricted scope, where the artifact refuses a value only if a chunk in the scope holds it
and PostgreSQL if any chunk does. The verdicts are counted (printed at the end, ``pytest -s``).
Mixed metadata (filter_cases' nodes: every type in one key, lists, objects, null, NaN) and
well-typed metadata (the Elasticsearch differential's cases) both.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from psycopg import sql

from functions.errors import UnsupportedFilter
from functions.pg_filters import pg_filter
from functions.postgres import PostgresBackend, table_name
from functions.vector_store import translate_filters
from index_builder.postgres import Database
from index_builder.progress import Progress

from .filter_cases import Case, Pair, cases
from .postgres_server import Postgres
from .test_es_filters_differential import Check, typed_cases

_EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass
class Pg:
    """The builder's loader and the function's backend on a schema of this module's own."""

    postgres: Postgres
    schema: str
    database: Database
    backend: PostgresBackend
    tally: Counter[str]


@pytest.fixture(scope="module")
def pg(postgres: Postgres) -> Iterator[Pg]:
    schema = f"pgf{uuid.uuid4().hex[:12]}"
    found = Pg(
        postgres,
        schema,
        Database(postgres.dsn, schema=schema),
        PostgresBackend(postgres.dsn, schema=schema, timeout_s=30),
        Counter(),
    )
    yield found
    found.backend.close()
    found.database.close()
    postgres.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    print("\npg_filter against PostgreSQL:", dict(sorted(found.tally.items())))


@_EXAMPLES
@given(case=cases(max_nodes=10, max_queries=12))
def test_mixed_metadata_same_chunks_or_refused_by_both(pg: Pg, case: Case) -> None:
    checks = [Check(translate_filters(q.filters), q.node_ids, q.doc_ids) for q in case.queries]
    with Pair(Case(case.nodes, [])) as pair:
        _judge(pg, pair, checks, "mixed")


@_EXAMPLES
@given(typed=typed_cases())
def test_well_typed_metadata_same_chunks_or_refused_by_both(
    pg: Pg, typed: tuple[Case, list[Check]]
) -> None:
    case, checks = typed
    with Pair(case) as pair:
        _judge(pg, pair, checks, "typed")


def _judge(pg: Pg, pair: Pair, checks: list[Check], name: str) -> None:
    """Load the case's index, put every check to both, count the verdicts, drop the index."""
    artifact = pair.index.artifact
    manifest = artifact.manifest
    pg.database.load(manifest, "sha", lambda _: artifact, Progress(bars=False))
    try:
        searcher = pg.backend.open(pg.backend.locate(manifest.index_id).manifest, {})
        for check in checks:
            pg.tally[f"{name}: {_verdict(pg, pair, searcher, check)}"] += 1
    finally:
        assert pg.database.collect(set(), dry_run=False, incomplete_after=None)


def _verdict(pg: Pg, pair: Pair, searcher: object, check: Check) -> str:
    filters, ids = pair.index.filters, pair.index.artifact.ids()[0]
    scope = filters.scope(check.node_ids, check.doc_ids)
    want: set[str] | None = None
    try:
        mask = (
            np.ones(len(ids), dtype=bool)
            if check.where is None
            else filters.mask(check.where, scope)
        )
        mask = mask if scope is None else mask & scope
        want = {ids[row] for row in np.flatnonzero(mask)}
    except UnsupportedFilter:
        pass
    refused: UnsupportedFilter | None = None
    try:
        condition, params = pg_filter(
            check.where,
            searcher,  # type: ignore[arg-type]
            node_ids=check.node_ids,
            doc_ids=check.doc_ids,
        )
    except UnsupportedFilter as exc:
        refused = exc
    if refused is not None:
        if want is None:
            return "both refuse"
        assert scope is not None, f"PostgreSQL alone refuses, on the whole index: {refused}"
        assert check.where is not None
        with pytest.raises(UnsupportedFilter):
            filters.mask(check.where)  # the artifact refuses it too, on the whole index
        return "refused by PostgreSQL only (an id scope without the raising value)"
    assert want is not None, f"the artifact refuses, PostgreSQL answers {condition} {params}"
    table = sql.Identifier(pg.schema, table_name(pair.index.artifact.manifest.index_id))
    statement = sql.SQL("SELECT node_id FROM {} WHERE {}").format(table, sql.SQL(condition))  # type: ignore[arg-type]
    with psycopg.connect(pg.postgres.dsn) as conn:
        got = {row[0] for row in conn.execute(statement, params).fetchall()}
    assert got == want, (check, condition, params)
    return "same chunks"
