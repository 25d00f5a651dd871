"""``es_filter`` against the real Elasticsearch (scripts/elasticsearch.py): the chunks a translated
filter admits there are the chunks the artifact's ``Filters`` admit.

Each generated case is written as an artifact (tests/filter_cases.py), loaded by the builder's
``Cluster`` (mapping and ``_meta.metadata`` facts included) and asked each of its queries as
``{"bool": {"filter": es_filter(...)}}``, sets compared (ranking is tested elsewhere). A query
passes when both give the same chunks, when both refuse, or when Elasticsearch alone refuses;
those are counted (printed at the end of the module, ``pytest -s``). With mixed metadata
(filter_cases' nodes) most keys are unsearchable; with well-typed metadata (one scalar type a
key, or lists of strings; missing and null too) Elasticsearch may refuse alone only where the
artifact refuses on the whole index or where no translation can be exact (whole lists compared,
[] told from a missing key, case folded where Python's lower() and Elasticsearch differ).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functions.errors import UnsupportedFilter
from functions.es_filters import es_filter
from functions.filters import OPERATORS, Combine, Condition, FilterGroup, matches
from functions.vector_store import translate_filters
from index_builder.elastic import Cluster
from index_builder.progress import Progress

from .filter_cases import DOCS, Case, Pair, cases

KEYS = ["a", "b", "c", "tags"]
FILTER_KEYS = [*KEYS, "doc_id", "_node_type", "missing", "_node_content"]
_RANGES = ("==", "!=", ">", ">=", "<", "<=")
_EXAMPLES = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class Check:
    """One question put to both: a filter tree and the ids it is restricted to."""

    where: FilterGroup | None
    node_ids: list[str] | None
    doc_ids: list[str] | None


@dataclass
class Elastic:
    """The server, the builder's loader on a prefix of this module's own, and the tally."""

    cluster: Cluster
    http: httpx.Client
    tally: Counter[str]


@pytest.fixture(scope="module")
def elastic(elasticsearch_url: str) -> Iterator[Elastic]:
    prefix = f"esf{uuid.uuid4().hex[:12]}"
    cluster = Cluster(elasticsearch_url, prefix=prefix, replicas=0)
    with httpx.Client(base_url=elasticsearch_url, timeout=60) as http:
        found = Elastic(cluster, http, Counter())
        yield found
        left = http.get(f"/{prefix}-*").json()
        if left:  # by name: the server refuses to delete by wildcard
            http.delete(f"/{','.join(left)}").raise_for_status()
    cluster.close()
    print("\nes_filter against Elasticsearch:", dict(sorted(found.tally.items())))


# Well-typed metadata: each key one type for the whole case. Wildcard characters, a non-ASCII
# letter, and now and then the two characters whose lower() is ASCII (U+0130, U+212A).
_text = st.one_of(
    st.text(alphabet="abAB*?\\ \u00e9", max_size=3), st.sampled_from(["\u212a", "a\u0130"])
)
_word = st.text(alphabet="abAB", max_size=2)
_TYPED = {
    "str": _text,
    "int": st.one_of(st.integers(-3, 3), st.sampled_from([2**53 + 1, 2**63 - 1, -(2**63)])),
    "float": st.one_of(
        st.floats(-3, 3),
        st.sampled_from([-0.0, 0.5, 5e-324, -5e-324, 1e308, 2.0**60, math.nan, math.inf]),
    ),
    "bool": st.booleans(),
    "strings": st.lists(_word, max_size=3),
}
# Filter values of any type, and of the type of the key they filter (half the conditions).
_wanted = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([2**53 + 1, 2**63, -(2**63) - 1, 2**64]),
    st.floats(-3, 3),
    st.sampled_from([0.0, -0.0, 1.5, 5e-324, 2.0**60, 1e308, math.nan, math.inf, -math.inf]),
    st.text(alphabet="abkAB*?\\\u00e9", max_size=3),
    st.lists(_word, max_size=3),
    st.lists(st.integers(-3, 3), max_size=3),
    st.lists(st.floats(-3, 3), max_size=3),
    st.lists(st.booleans(), max_size=2),
)
_needle = st.text(alphabet="abAB*?\\ ", max_size=3)
_LIKE = {
    "str": st.one_of(_needle, st.lists(_needle, max_size=3)),
    "int": st.one_of(st.integers(-3, 3), st.floats(-3, 3), st.lists(st.integers(-3, 3))),
    "float": st.one_of(st.floats(-3, 3), st.sampled_from([-0.0, 5e-324]), st.lists(st.floats())),
    "bool": st.one_of(st.booleans(), st.integers(0, 1), st.lists(st.booleans(), max_size=2)),
    "strings": st.one_of(_word, st.lists(_word, max_size=3)),
}
_combine: st.SearchStrategy[Combine] = st.sampled_from(["and", "or", "not"])
_operators = st.sampled_from(sorted(OPERATORS))


def _trees(kinds: dict[str, str]) -> st.SearchStrategy[FilterGroup]:
    """Filter trees over every key and operator; half the values of the key's own type."""
    conditions = st.one_of(
        st.builds(Condition, st.sampled_from(FILTER_KEYS), _operators, _wanted),
        st.sampled_from(KEYS).flatmap(
            lambda key: st.builds(Condition, st.just(key), _operators, _LIKE[kinds[key]])
        ),
    )

    def groups(items: st.SearchStrategy[Any]) -> st.SearchStrategy[FilterGroup]:
        return st.builds(FilterGroup, st.lists(items, max_size=3).map(tuple), _combine)

    return st.one_of(
        conditions.map(lambda condition: FilterGroup((condition,))),
        st.recursive(groups(conditions), lambda children: groups(st.one_of(conditions, children))),
    )


@st.composite
def typed_cases(draw: st.DrawFn) -> tuple[Case, list[Check]]:
    """1 to 10 nodes whose keys each hold one type (or null, or nothing), and up to 12 checks."""
    kinds = {key: draw(st.sampled_from(sorted(_TYPED))) for key in KEYS}
    # At least one node: a node field is on every chunk, so an empty index is the one place where
    # the artifact answers what Elasticsearch refuses for its type.
    name = st.text(alphabet="xyz", min_size=1, max_size=3)
    ids = draw(st.lists(name, unique=True, min_size=1, max_size=10))
    nodes = []
    for node in ids:
        metadata = {}
        for key, kind in kinds.items():
            choice = draw(st.integers(0, 4))  # 0: missing, 1: null
            if choice:
                metadata[key] = draw(_TYPED[kind]) if choice > 1 else None
        nodes.append((node, draw(st.sampled_from(DOCS)), metadata, [1, 0, 0]))
    some_ids = st.lists(st.sampled_from([*ids, "unknown"]), min_size=1, max_size=3)
    trees = _trees(kinds)
    checks = draw(
        st.lists(
            st.builds(
                Check,
                st.one_of(st.none(), trees, trees, trees),
                st.one_of(st.none(), st.none(), st.none(), some_ids),
                st.one_of(st.none(), st.none(), st.none(), st.lists(st.sampled_from(DOCS))),
            ),
            min_size=1,
            max_size=12,
        )
    )
    return Case(nodes, []), checks


@_EXAMPLES
@given(case=cases(max_nodes=10, max_queries=12))
def test_mixed_metadata_same_chunks_or_refused(elastic: Elastic, case: Case) -> None:
    checks = [Check(translate_filters(q.filters), q.node_ids, q.doc_ids) for q in case.queries]
    with Pair(Case(case.nodes, [])) as pair:
        _judge(elastic, pair, checks, "mixed", typed=False)


@_EXAMPLES
@given(typed=typed_cases())
def test_well_typed_metadata_same_chunks_or_refused_by_both(
    elastic: Elastic, typed: tuple[Case, list[Check]]
) -> None:
    case, checks = typed
    with Pair(case) as pair:
        _judge(elastic, pair, checks, "typed", typed=True)


def _judge(elastic: Elastic, pair: Pair, checks: list[Check], name: str, *, typed: bool) -> None:
    """Load the case's index, put every check to both, count the verdicts, delete the index."""
    artifact = pair.index.artifact
    manifest = artifact.manifest
    sha256 = hashlib.sha256(manifest.model_dump_json().encode()).hexdigest()
    elastic.cluster.load(manifest, sha256, lambda _: artifact, Progress(bars=False))
    index = elastic.cluster.index_name(manifest.index_id)
    try:
        mapping = elastic.http.get(f"/{index}/_mapping").json()[index]["mappings"]
        facts = mapping["_meta"]["metadata"]  # as the function reads them back
        for check in checks:
            elastic.tally[f"{name}: {_verdict(elastic, index, pair, facts, check, typed)}"] += 1
    finally:
        elastic.http.delete(f"/{index}").raise_for_status()


def _verdict(
    elastic: Elastic,
    index: str,
    pair: Pair,
    facts: dict[str, dict[str, Any]],
    check: Check,
    typed: bool,
) -> str:
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
        clauses = es_filter(check.where, facts, node_ids=check.node_ids, doc_ids=check.doc_ids)
    except UnsupportedFilter as exc:
        refused = exc
    if refused is not None:
        if want is None:
            return "both refuse"
        if not typed:
            return "refused by Elasticsearch only"
        if _refused_everywhere(pair, check):
            return "refused by Elasticsearch only (the artifact refuses it on the whole index)"
        assert _inexpressible(check.where, facts), refused.message
        return "refused by Elasticsearch only (no exact translation)"
    assert want is not None, f"the artifact refuses, Elasticsearch answers {clauses}"
    response = elastic.http.post(
        f"/{index}/_search",
        json={"query": {"bool": {"filter": clauses}}, "size": len(ids) + 1, "_source": False},
    )
    response.raise_for_status()
    got = {hit["_id"] for hit in response.json()["hits"]["hits"]}
    assert got == want, (check, clauses, facts)
    return "same chunks"


def _refused_everywhere(pair: Pair, check: Check) -> bool:
    """Whether the artifact refuses ``check``'s filter on the whole index."""
    try:
        if check.where is not None:
            pair.index.filters.mask(check.where)
    except UnsupportedFilter:
        return True
    return False


def _inexpressible(where: FilterGroup | None, facts: dict[str, dict[str, Any]]) -> bool:
    """Whether a condition of ``where`` has no exact translation whatever the data: it compares
    whole lists, tells [] from a missing key, or folds what Python and Elasticsearch fold apart."""
    for item in where.items if where is not None else ():
        if isinstance(item, FilterGroup):
            if _inexpressible(item, facts):
                return True
            continue
        op, wanted = item.op, item.value
        fact = facts.get(item.key, {}) if item.key not in ("doc_id", "_node_type") else {}
        if fact.get("shape") == "list" and op in _RANGES and isinstance(wanted, list):
            return True
        if fact.get("empty_list") and _tells_empty_from_missing(op, wanted):
            return True
        folds = fact.get("folds_to_ascii", True) and not {"i", "k"}.isdisjoint(str(wanted).lower())
        if op == "text_match_insensitive" and (not str(wanted).isascii() or folds):
            return True
    return False


def _tells_empty_from_missing(op: str, wanted: Any) -> bool:
    try:
        return matches(op, wanted, []) != matches(op, wanted, None)
    except Exception:  # raises on []: the artifact refuses on the whole index
        return False
