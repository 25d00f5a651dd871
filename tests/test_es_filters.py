"""The Elasticsearch translation of metadata filters, pure: facts in, the query or the refusal
out. Whether Elasticsearch answers these queries as the artifact does is
tests/test_es_filters_differential.py's part."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import pytest

from functions.errors import UnsupportedFilter
from functions.es_filters import es_filter, field_mapping, metadata_facts
from functions.filters import Condition, FilterGroup

KEYWORD = {"type": "keyword", "shape": "scalar", "empty_list": False, "folds_to_ascii": False}
FACTS: dict[str, dict[str, Any]] = {
    "kind": KEYWORD,
    "title": {**KEYWORD, "folds_to_ascii": True},
    "tags": {**KEYWORD, "shape": "list", "empty_list": True},
    "labels": {**KEYWORD, "shape": "list"},
    "mixed": {**KEYWORD, "shape": "both"},
    "flag": {"type": "boolean", "shape": "scalar", "empty_list": False, "booleans": [True]},
    "n": {"type": "long", "shape": "scalar", "empty_list": False},
    "x": {"type": "double", "shape": "scalar", "empty_list": False, "inexact": False},
    "big": {"type": "double", "shape": "scalar", "empty_list": False, "inexact": True},
    "nulls": {"type": "none", "shape": "scalar", "empty_list": True},
    "meta": {"type": "unsearchable", "shape": "scalar", "empty_list": False},
    "a*": KEYWORD,
}
ALL: dict[str, Any] = {"match_all": {}}
NONE: dict[str, Any] = {"match_none": {}}


def exists(key: str) -> dict[str, Any]:
    return {"exists": {"field": f"metadata.{key}"}}


def absent(key: str) -> dict[str, Any]:
    return {"bool": {"must_not": [exists(key)]}}


def term(key: str, value: Any) -> dict[str, Any]:
    return {"term": {f"metadata.{key}": value}}


def either(*queries: dict[str, Any]) -> dict[str, Any]:
    return {"bool": {"should": list(queries), "minimum_should_match": 1}}


def wildcard(key: str, value: str, **more: Any) -> dict[str, Any]:
    return {"wildcard": {f"metadata.{key}": {"value": value, **more}}}


def span(key: str, **bound: Any) -> dict[str, Any]:
    return {"range": {f"metadata.{key}": bound}}


TRANSLATED: list[tuple[str, str, Any, list[dict[str, Any]]]] = [
    ("kind", "==", "news", [term("kind", "news")]),
    ("kind", "==", 1, [NONE]),
    ("kind", "!=", "news", [{"bool": {"must_not": [term("kind", "news")]}}]),
    ("kind", "!=", ["news"], []),
    ("kind", ">", "b", [span("kind", gt="b")]),
    ("kind", "<=", "", [span("kind", lte="")]),
    ("kind", "in", ["a", 1, "b", "a"], [{"terms": {"metadata.kind": ["a", "b"]}}]),
    ("kind", "in", "ab", [{"terms": {"metadata.kind": ["", "a", "ab", "b"]}}]),
    ("kind", "in", {"a": 1}, [term("kind", "a")]),
    ("kind", "nin", [], []),
    ("kind", "nin", ["a"], [{"bool": {"must_not": [term("kind", "a")]}}]),
    ("kind", "contains", "a*?\\", [wildcard("kind", "*a\\*\\?\\\\*")]),
    ("kind", "text_match", "", [exists("kind")]),
    ("kind", "text_match_insensitive", "Ki", [wildcard("kind", "*Ki*", case_insensitive=True)]),
    (
        "title",
        "text_match_insensitive",
        "AB",
        [wildcard("title", "*AB*", case_insensitive=True)],
    ),
    ("kind", "any", ["a", "b"], [either(wildcard("kind", "*a*"), wildcard("kind", "*b*"))]),
    ("kind", "any", [], [NONE]),
    (
        "kind",
        "all",
        "ab",
        [{"bool": {"filter": [wildcard("kind", "*a*"), wildcard("kind", "*b*")]}}],
    ),
    ("kind", "all", ["", "a"], [wildcard("kind", "*a*")]),
    ("kind", "is_empty", None, [either(term("kind", ""), absent("kind"))]),
    ("tags", "contains", "x", [term("tags", "x")]),
    ("tags", "contains", 1, [NONE]),
    ("tags", "any", ["x", 1], [term("tags", "x")]),
    ("tags", "all", ["x", "y"], [{"bool": {"filter": [term("tags", "x"), term("tags", "y")]}}]),
    ("tags", "all", ["x", 1], [NONE]),
    ("tags", "==", "x", [NONE]),
    ("tags", "==", ["x", 1], [NONE]),
    ("tags", "in", ["x"], [NONE]),
    ("tags", "nin", ["x"], []),
    ("tags", "is_empty", None, [absent("tags")]),
    ("mixed", "==", 3, [NONE]),
    ("mixed", "any", [], [NONE]),
    ("flag", "==", 1, [exists("flag")]),
    ("flag", "!=", 1.0, [absent("flag")]),
    ("flag", "<", 1, [NONE]),
    ("flag", "in", [True, "x"], [exists("flag")]),
    ("n", "==", 2.0, [term("n", 2)]),
    ("n", "==", True, [term("n", 1)]),
    ("n", "==", 2.5, [NONE]),
    ("n", "!=", 2.5, []),
    ("n", "in", [1, 1.0, True, 2.5, "1", 2**63], [term("n", 1)]),
    ("n", ">", 1.5, [span("n", gte=2)]),
    ("n", ">=", 1.5, [span("n", gte=2)]),
    ("n", "<", -1.5, [span("n", lte=-2)]),
    ("n", "<=", 2, [span("n", lte=2)]),
    ("n", ">", 2**63, [NONE]),
    ("n", ">=", -(2**63), [exists("n")]),
    ("n", "<", math.inf, [exists("n")]),
    ("n", ">", math.nan, [NONE]),
    ("n", "any", [], [NONE]),
    ("n", "all", [], [exists("n")]),
    ("n", "is_empty", "", [absent("n")]),
    ("x", "==", 0, [{"terms": {"metadata.x": [-0.0, 0.0]}}]),
    ("x", "==", 2**53 + 1, [NONE]),
    ("x", "in", [1, 1.5, -0.0], [{"terms": {"metadata.x": [1.0, 1.5, -0.0, 0.0]}}]),
    ("x", ">", 0, [span("x", gte=5e-324)]),
    ("x", ">=", 0.0, [span("x", gte=-0.0)]),
    ("x", "<", 0.0, [span("x", lte=-5e-324)]),
    ("x", "<=", -0.0, [span("x", lte=0.0)]),
    ("x", ">", 2**53 + 1, [span("x", gte=float(2**53 + 2))]),
    ("x", "<=", 2**53 + 1, [span("x", lte=float(2**53))]),
    ("x", ">", 10**400, [NONE]),
    ("x", "<", 10**400, [exists("x")]),
    ("x", ">", sys.float_info.max, [NONE]),
    ("x", ">=", -math.inf, [exists("x")]),
    ("big", "==", "x", [NONE]),
    ("nulls", "==", 1, [NONE]),
    ("nulls", "nin", [1], []),
    ("missing", "!=", 1, []),
    ("missing", ">", "x", [NONE]),
    ("_node_content", "is_empty", None, []),
    ("doc_id", "==", "d1", [term("doc_id", "d1")]),
    ("_node_type", "text_match", "Text", [wildcard("_node_type", "*Text*")]),
]
REFUSED: list[tuple[str, str, Any, str]] = [
    ("kind", ">", 1, "holds strings, on which LlamaIndex raises TypeError"),
    ("kind", "in", 1, "holds strings, on which LlamaIndex raises TypeError"),
    ("kind", "contains", ["a"], "holds strings, on which LlamaIndex raises TypeError"),
    ("kind", "text_match", 1, "holds strings, on which LlamaIndex raises TypeError"),
    ("kind", "any", ["a", 1], "raises at a non-string item unless an earlier item decided"),
    ("kind", "all", None, "LlamaIndex raises TypeError: NoneType is not iterable"),
    ("kind", "in", "a" * 65, "substrings, listed as terms up to 64 characters"),
    ("kind", "text_match_insensitive", "\xe9", "a needle of non-ASCII characters"),
    ("title", "text_match_insensitive", "K", "may hold U+0130 or U+212A"),
    ("doc_id", "text_match_insensitive", "i", "may hold U+0130 or U+212A"),
    ("kind", "==", "\ud800", "not valid Unicode"),
    ("tags", "==", ["x"], "holds lists: '==' compares whole lists"),
    ("tags", "!=", ["x", "y"], "holds lists: '!=' compares whole lists"),
    ("tags", ">", ["x"], "holds lists: '>' compares whole lists"),
    ("labels", ">", "x", "holds lists of strings, on which LlamaIndex raises TypeError"),
    ("tags", "in", [["x"]], "holds lists: 'in' compares whole lists"),
    ("labels", "text_match", "x", "holds lists of strings, on which LlamaIndex raises"),
    ("tags", "==", [], "holds empty lists, which Elasticsearch does not index"),
    ("tags", "all", [], "'all' admits [] but not a missing key"),
    ("tags", "in", "xy", "holds empty lists, on which LlamaIndex raises TypeError"),
    ("nulls", "!=", [], "'!=' refuses [] but not a missing key"),
    ("mixed", "==", "x", 'Elasticsearch indexes alike ("x" and ["x"] are one term)'),
    ("mixed", "text_match", "x", "holds lists of strings, on which LlamaIndex raises"),
    ("flag", "contains", True, "holds the boolean True, on which LlamaIndex raises"),
    ("n", ">", "1", "holds numbers, on which LlamaIndex raises TypeError"),
    ("n", "contains", 1, "holds numbers, on which LlamaIndex raises TypeError"),
    ("n", "any", [1], "holds numbers, on which LlamaIndex raises TypeError"),
    ("n", "in", None, "holds numbers, on which LlamaIndex raises TypeError"),
    ("x", "text_match", "1", "holds numbers, on which LlamaIndex raises TypeError"),
    ("big", "==", 1, "integers beyond 2**53, which Elasticsearch's double field rounds"),
    ("big", ">", 1, "integers beyond 2**53"),
    ("meta", "==", 1, "holds values of mixed types, objects"),
    ("meta", "is_empty", None, "holds values of mixed types, objects"),
    ("a*", "==", "x", "reads '*' in a field name as a wildcard"),
]


def ids(table: list[Any]) -> list[str]:
    return [f"{key} {op} {value!r}"[:40] for key, op, value, _ in table]


def one(key: str, op: str, value: Any) -> list[dict[str, Any]]:
    return es_filter(FilterGroup((Condition(key, op, value),)), FACTS)


@pytest.mark.parametrize(
    ("values", "fact"),
    [
        (["a", None, []], {**KEYWORD, "empty_list": True}),
        ([["a", "b"], ["c"]], {**KEYWORD, "shape": "list"}),
        (["a", ["b"]], {**KEYWORD, "shape": "both"}),
        (["\u212a"], {**KEYWORD, "folds_to_ascii": True}),
        (
            [False, True, None],
            {"type": "boolean", "shape": "scalar", "empty_list": False, "booleans": [False, True]},
        ),
        ([1, -(2**63), 2**63 - 1], {"type": "long", "shape": "scalar", "empty_list": False}),
        ([1, 1.5], {"type": "double", "shape": "scalar", "empty_list": False, "inexact": False}),
        (
            [1.5, 2**53 + 1],
            {"type": "double", "shape": "scalar", "empty_list": False, "inexact": True},
        ),
        ([1, math.nan, math.inf], {"type": "long", "shape": "scalar", "empty_list": False}),
        ([None, [], math.nan], {"type": "none", "shape": "scalar", "empty_list": True}),
        ([], {"type": "none", "shape": "scalar", "empty_list": False}),
        (["a", 1], {"type": "unsearchable", "shape": "scalar", "empty_list": False}),
        ([True, 1], {"type": "unsearchable", "shape": "scalar", "empty_list": False}),
        ([2**63], {"type": "unsearchable", "shape": "scalar", "empty_list": False}),
        ([{"a": 1}], {"type": "unsearchable", "shape": "scalar", "empty_list": False}),
        ([[1, 2]], {"type": "unsearchable", "shape": "list", "empty_list": False}),
        ([["a", None]], {"type": "unsearchable", "shape": "list", "empty_list": False}),
        ([[math.nan]], {"type": "unsearchable", "shape": "list", "empty_list": False}),
    ],
    ids=[
        "strings-null-empty",
        "string-lists",
        "strings-and-lists",
        "kelvin-sign",
        "booleans",
        "int64",
        "ints-and-floats",
        "inexact",
        "nan-is-null",
        "only-null",
        "no-values",
        "mixed",
        "bool-and-int",
        "beyond-int64",
        "object",
        "int-lists",
        "null-in-list",
        "nan-in-list",
    ],
)
def test_facts_say_type_and_shape(values: list[Any], fact: dict[str, Any]) -> None:
    assert metadata_facts({"k": values}) == {"k": fact}


def test_facts_are_small_json_and_leave_out_what_llamaindex_overwrites() -> None:
    columns: dict[str, list[Any]] = {
        "many": [f"v{i}" for i in range(10_000)],
        "doc_id": [1],
        "_node_content": ["x"],
    }
    facts = metadata_facts(columns)
    assert list(facts) == ["many"]
    assert len(json.dumps(facts)) < 120


@pytest.mark.parametrize(
    ("kind", "mapping"),
    [
        ("keyword", {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}}),
        ("boolean", {"type": "boolean"}),
        ("long", {"type": "long"}),
        ("double", {"type": "double"}),
        ("none", {"type": "object", "enabled": False}),
        ("unsearchable", {"type": "object", "enabled": False}),
    ],
)
def test_the_mapping_follows_the_type(kind: str, mapping: dict[str, Any]) -> None:
    assert field_mapping({"type": kind, "shape": "scalar", "empty_list": False}) == mapping


@pytest.mark.parametrize(("key", "op", "value", "expected"), TRANSLATED, ids=ids(TRANSLATED))
def test_a_condition_translates_exactly(
    key: str, op: str, value: Any, expected: list[dict[str, Any]]
) -> None:
    assert one(key, op, value) == expected


@pytest.mark.parametrize(("key", "op", "value", "why"), REFUSED, ids=ids(REFUSED))
def test_what_cannot_be_exact_is_refused_saying_why(
    key: str, op: str, value: Any, why: str
) -> None:
    with pytest.raises(UnsupportedFilter) as refused:
        one(key, op, value)
    assert refused.value.message.startswith(f"filter {key!r} {op} ")
    assert why in refused.value.message


def test_a_refusal_shows_a_long_value_cut_short() -> None:
    with pytest.raises(UnsupportedFilter) as refused:
        one("meta", "in", list(range(1000)))
    assert "[0, 1, 2," in refused.value.message
    assert len(refused.value.message) < 300


def test_groups_nest_and_fold_constants() -> None:
    eq, ne = Condition("kind", "==", "a"), Condition("n", "!=", 1)
    never, always = Condition("missing", "==", 1), Condition("missing", "!=", 1)
    not_eq = {"bool": {"must_not": [term("kind", "a")]}}
    ne_query = {"bool": {"must_not": [term("n", 1)]}}
    cases: list[tuple[FilterGroup, list[dict[str, Any]]]] = [
        (FilterGroup(()), []),
        (FilterGroup((), "not"), []),  # an empty group admits everything, as in filters.py
        (FilterGroup((eq, ne)), [{"bool": {"filter": [term("kind", "a"), ne_query]}}]),
        (FilterGroup((eq, ne), "or"), [either(term("kind", "a"), ne_query)]),
        (FilterGroup((eq,), "not"), [not_eq]),
        (FilterGroup((eq, always)), [term("kind", "a")]),
        (FilterGroup((eq, never)), [NONE]),
        (FilterGroup((eq, always), "or"), []),
        (FilterGroup((always,), "not"), [NONE]),
        (FilterGroup((FilterGroup((eq,), "not"), FilterGroup((never,), "or")), "or"), [not_eq]),
    ]
    assert [es_filter(where, FACTS) for where, _ in cases] == [query for _, query in cases]


def test_every_condition_of_a_group_is_translated_so_each_refusal_happens() -> None:
    where = FilterGroup((Condition("missing", "==", 1), Condition("kind", ">", 1)), "and")
    with pytest.raises(UnsupportedFilter, match=r"'kind' >"):
        es_filter(where, FACTS)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (FilterGroup((Condition("kind", "like", "a"),)), "filter operator 'like' is not supported"),
        (FilterGroup((), "xor"), "filter condition 'xor' is not supported"),  # type: ignore[arg-type]
    ],
    ids=["operator", "condition"],
)
def test_what_filters_py_does_not_know_is_refused(where: FilterGroup, message: str) -> None:
    with pytest.raises(UnsupportedFilter, match=message):
        es_filter(where, FACTS)


def test_node_and_document_ids_restrict_first() -> None:
    where = FilterGroup((Condition("kind", "==", "a"),))
    assert es_filter(where, FACTS, node_ids=["n2", "n1", "n2"], doc_ids={"d0"}) == [
        {"ids": {"values": ["n1", "n2"]}},
        {"terms": {"metadata.doc_id": ["d0"]}},
        term("kind", "a"),
    ]
    assert es_filter(None, FACTS, node_ids=[], doc_ids=[]) == [NONE, NONE]
    assert es_filter(None, FACTS) == []


def test_a_format_1_index_serves_node_fields_only() -> None:
    assert es_filter(FilterGroup((Condition("doc_id", "==", "d"),)), None) == [term("doc_id", "d")]
    with pytest.raises(UnsupportedFilter, match=r"'kind' == 'a' .* no metadata facts \(format 1"):
        es_filter(FilterGroup((Condition("kind", "==", "a"),)), None)


def test_only_two_characters_lower_into_ascii() -> None:
    """Why an ASCII needle without i or k folds alike in Python and Elasticsearch, whatever the
    strings hold (Elasticsearch folds an ASCII letter to its two ASCII cases only)."""
    folding = {
        chr(code)
        for code in range(128, sys.maxunicode + 1)
        if any(c.isascii() for c in chr(code).lower())
    }
    assert folding == {"\u0130", "\u212a"}
    assert "".join(sorted(c for ch in folding for c in ch.lower() if c.isascii())) == "ik"
