"""Metadata filters as Elasticsearch queries: the chunks ``functions.filters`` admits, or refused.

A translation exists only where it gives the artifact's answer on every document the index could
hold; it rests on what the builder knows of each metadata key (``metadata_facts``, kept in the
index's ``_meta.metadata``): its type, its shape, whether it holds ``[]`` (not indexed: it looks
like a missing key), for booleans which occur, for doubles whether integers beyond 2**53 were
rounded. Everything else is ``UnsupportedFilter``, naming the key, the operator and why. Values
are a key's values as LlamaIndex sees them (non-finite floats are null); null and a missing key
are one (LlamaIndex's ``None``); only ``!=``, ``nin`` and ``is_empty`` admit it.

    type / shape        translated                                   refused
    keyword (strings)   == != (term), > >= < <= (keyword range:      order, contains, text_match
                        code-point order), in nin (terms; in a       against a non-string (Python
                        string of <= 64: its substrings), contains   raises); any/all with a
                        text_match any all (wildcard *x*),           non-string item; insensitive
                        text_match_insensitive (ASCII needle),       with a non-ASCII needle, or
                        is_empty (term "")                           i/k where U+0130 or U+212A
    lists of strings    contains any all (terms), in nin ==          == != in nin comparing whole
                        (no list equals a scalar), is_empty          lists; order; text_match
    strings and lists   what means the same for both                 the rest: "x" is ["x"] there
    boolean             every operator, evaluated on the values      where Python raises on one
                        that occur (True == 1 == 1.0)
    long                == != in nin (integral values), ranges       order against a non-number,
                        (x > 1.5 is x >= 2; bounds past int64)       contains, text_match, non-
    double              == != in nin ranges (exact double bounds,    empty any/all (Python raises);
                        -0.0 == 0.0)                                 ints beyond 2**53 (rounded)
    none (null or [])   every operator (one verdict for all)
    unsearchable        nothing (mixed types, objects, lists of      every operator
                        non-strings, ints beyond int64)

Everywhere: a key with empty lists refuses the operators that treat ``[]`` and a missing key
differently (``== []``, ``all []``) or raise on it; a key no chunk holds gets the verdict of a
missing key; ``doc_id``, ``document_id``, ``ref_doc_id`` and ``_node_type`` are strings on every
chunk, ``_node_content`` is absent (as in ``functions.filters``). Groups are and / or / not
(none) / empty (everything), nested; every condition is translated, so each refusal happens.

Over 400 lines: each type is a case of its own, each operator next to why its translation is
exact, and the facts and mappings are here so that they cannot disagree with the translation.
"""

from __future__ import annotations

import copy
import math
import sys
from collections.abc import Collection, Sequence
from typing import Any

from .errors import UnsupportedFilter
from .filters import OPERATORS, Condition, FilterGroup, as_llamaindex_sees, matches

__all__ = ["es_filter", "field_mapping", "metadata_facts"]

Query = dict[str, Any]
# What a condition admits among the chunks that have the key in Elasticsearch: (query, negated);
# (None, False) none of them, (None, True) all of them, (q, True) those q does not match.
_Present = tuple[Query | None, bool]
_NOTHING: _Present = (None, False)
_EVERY: _Present = (None, True)
_ALL: Query = {"match_all": {}}
_NONE: Query = {"match_none": {}}

_LONG = range(-(2**63), 2**63)
_EXACT_INTS = 2**53  # beyond it a double rounds integers
_NODE_KEYS = frozenset({"doc_id", "document_id", "ref_doc_id", "_node_type"})
_NODE_FACT = {"type": "keyword", "shape": "scalar", "empty_list": False, "folds_to_ascii": True}
_NOT_METADATA = _NODE_KEYS | {"_node_content"}  # node_to_metadata_dict writes these itself
_FOLDING = frozenset("\u0130\u212a")  # the only characters whose lower() holds ASCII
_RANGE = {">": "gt", ">=": "gte", "<": "lt", "<=": "lte"}
_MAX_SUBSTRINGS_OF = 64  # "x in <string>" lists the string's substrings: 2081 at most


def metadata_facts(columns: dict[str, list[Any]]) -> dict[str, dict[str, Any]]:
    """Per metadata key (the artifact's ``columns``: every distinct value), what a translation
    needs: ``type`` (keyword, boolean, long, double, none: only null and [], unsearchable),
    ``shape`` (scalar, list, both), ``empty_list``; ``booleans`` that occur, ``inexact`` doubles,
    ``folds_to_ascii`` strings (U+0130 or U+212A occur). Not the keys LlamaIndex overwrites."""
    return {key: _facts(values) for key, values in columns.items() if key not in _NOT_METADATA}


def field_mapping(fact: dict[str, Any]) -> dict[str, Any]:
    """A metadata key's Elasticsearch mapping: one type for all its values, so nothing is
    coerced; strings also at ``.keyword``, where LlamaIndex's own filters look; the rest kept in
    ``_source`` but not searched."""
    kind = fact["type"]
    if kind == "keyword":
        return {"type": "keyword", "fields": {"keyword": {"type": "keyword"}}}
    if kind in ("boolean", "long", "double"):
        return {"type": kind}
    return {"type": "object", "enabled": False}


def es_filter(
    where: FilterGroup | None,
    facts: dict[str, dict[str, Any]] | None,
    *,
    node_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> list[Query]:
    """The filter clauses that admit what ``Filters.mask`` admits within the scope (``[]``: no
    restriction); ``node_ids``/``doc_ids`` None: no restriction, empty: nothing. ``facts`` None
    (``_meta.metadata`` absent or null: format 1) refuses every condition on user metadata."""
    clauses: list[Query] = []
    if node_ids is not None:
        clauses.append({"ids": {"values": sorted(set(node_ids))}} if node_ids else _NONE)
    if doc_ids is not None:
        clauses.append({"terms": {"metadata.doc_id": sorted(set(doc_ids))}} if doc_ids else _NONE)
    if where is not None:
        query = _group(where, facts)
        if query != _ALL:
            clauses.append(query)
    return copy.deepcopy(clauses)  # the caller's to change: none of this module's constants


def _facts(values: list[Any]) -> dict[str, Any]:
    kinds: set[str] = set()
    shapes: set[str] = set()
    booleans: set[bool] = set()
    empty = big = folds = False
    for value in map(as_llamaindex_sees, values):
        if value is None:
            continue
        if isinstance(value, list):
            if not value:
                empty = True
                continue
            shapes.add("list")
            if not all(type(item) is str for item in value):
                kinds.add("unsearchable")
                continue
        else:
            shapes.add("scalar")
        for item in value if isinstance(value, list) else [value]:
            kind = _kind(item)
            kinds.add(kind)
            if kind == "keyword":
                folds = folds or not _FOLDING.isdisjoint(item)
            elif kind == "boolean":
                booleans.add(item)
            elif kind == "long":
                big = big or abs(item) > _EXACT_INTS
    if kinds == {"long", "double"}:
        kind = "double"  # Python compares 1 == 1.0; so does a double field
    else:
        kind = "none" if not kinds else kinds.pop() if len(kinds) == 1 else "unsearchable"
    shape = "both" if len(shapes) == 2 else shapes.pop() if shapes else "scalar"
    fact: dict[str, Any] = {"type": kind, "shape": shape, "empty_list": empty}
    if kind == "keyword":
        fact["folds_to_ascii"] = folds
    elif kind == "boolean":
        fact["booleans"] = sorted(booleans)
    elif kind == "double":
        fact["inexact"] = big
    return fact


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "long" if value in _LONG else "unsearchable"
    if isinstance(value, float):
        return "double"
    return "keyword" if isinstance(value, str) else "unsearchable"


def _group(where: FilterGroup, facts: dict[str, dict[str, Any]] | None) -> Query:
    if where.combine not in ("and", "or", "not"):
        raise UnsupportedFilter(f"filter condition {where.combine!r} is not supported")
    if not where.items:
        return _ALL
    parts = [
        _group(item, facts) if isinstance(item, FilterGroup) else _condition(item, facts)
        for item in where.items
    ]
    if where.combine == "and":
        return _and(parts)
    either = _or(parts)
    return either if where.combine == "or" else _not(either)


def _and(parts: Sequence[Query]) -> Query:
    parts = [part for part in parts if part != _ALL]
    if _NONE in parts:
        return _NONE
    return _ALL if not parts else parts[0] if len(parts) == 1 else {"bool": {"filter": parts}}


def _or(parts: Sequence[Query]) -> Query:
    parts = [part for part in parts if part != _NONE]
    if _ALL in parts:
        return _ALL
    if len(parts) < 2:
        return parts[0] if parts else _NONE
    return {"bool": {"should": parts, "minimum_should_match": 1}}


def _not(query: Query) -> Query:
    return _NONE if query == _ALL else _ALL if query == _NONE else {"bool": {"must_not": [query]}}


def _condition(condition: Condition, facts: dict[str, dict[str, Any]] | None) -> Query:
    key, op, wanted = condition.key, condition.op, condition.value
    if op not in OPERATORS:
        raise UnsupportedFilter(f"filter operator {op!r} is not supported")
    absent = matches(op, wanted, None)  # a missing key, null, and what Elasticsearch left out
    if key in _NODE_KEYS:
        fact: dict[str, Any] | None = _NODE_FACT
    elif key == "_node_content":
        fact = None
    elif facts is None:
        raise _refused(
            condition,
            "the index records no metadata facts (format 1, whose columns kept scalars only, or "
            "loaded before facts were recorded): rebuild or reload it",
        )
    else:
        fact = facts.get(key)
    if fact is None:  # no chunk has the key
        return _ALL if absent else _NONE
    if fact["empty_list"]:
        _empty_lists_agree(condition, absent)
    if fact["type"] == "none":
        return _ALL if absent else _NONE
    if fact["type"] == "unsearchable":
        raise _refused(
            condition,
            f"metadata key {key!r} holds values of mixed types, objects, lists of non-strings "
            "or integers beyond 64 bits, which Elasticsearch keeps but does not index",
        )
    if "*" in key:
        raise _refused(condition, "Elasticsearch reads '*' in a field name as a wildcard")
    if not _encodable(wanted):
        raise _refused(condition, "a string in it is not valid Unicode (a lone surrogate)")
    present = _TRANSLATIONS[fact["type"]](condition, fact)
    return _with_absent(present, absent, f"metadata.{key}")


def _with_absent(present: _Present, absent: bool, field: str) -> Query:
    """``present`` among the chunks with the field, and all or none of the others."""
    query, negated = present
    exists = {"exists": {"field": field}}
    if query is None:
        return (_ALL if absent else exists) if negated else (_not(exists) if absent else _NONE)
    if negated:
        return _not(query) if absent else {"bool": {"filter": [exists], "must_not": [query]}}
    return _or([query, _not(exists)]) if absent else query


def _empty_lists_agree(condition: Condition, absent: bool) -> None:
    """Refuse where ``[]`` (not indexed) and a missing key get different verdicts."""
    try:
        empty = matches(condition.op, condition.value, [])
    except Exception as exc:  # LlamaIndex raises on []
        raise _raises(condition, "empty lists", exc) from exc
    if empty != absent:
        raise _refused(
            condition,
            f"metadata key {condition.key!r} holds empty lists, which Elasticsearch does not "
            f"index (they look like a missing key), and {condition.op!r} "
            f"{'admits' if empty else 'refuses'} [] but not a missing key",
        )


def _strings(condition: Condition, fact: dict[str, Any]) -> _Present:
    op, wanted, field = condition.op, condition.value, f"metadata.{condition.key}"
    if op not in ("any", "all"):  # these raise or not on the string alone
        _check(condition, "x", "strings")
    if op in ("==", "!="):
        equal = ({"term": {field: wanted}}, False) if isinstance(wanted, str) else _NOTHING
        return equal if op == "==" else _negation(equal)
    if op in _RANGE:  # code-point order = UTF-8 byte order = keyword order
        return {"range": {field: {_RANGE[op]: wanted}}}, False
    if op in ("in", "nin"):
        if isinstance(wanted, str):
            terms = _substrings(condition)
        else:
            terms = [item for item in _container(condition) if isinstance(item, str)]
        found = _terms(field, terms)
        return found if op == "in" else _negation(found)
    if op in ("contains", "text_match"):
        return _substring(field, wanted)
    if op == "text_match_insensitive":
        if not wanted.isascii():
            raise _refused(
                condition,
                "a needle of non-ASCII characters: Python's lower() and Elasticsearch's "
                "case_insensitive fold them differently",
            )
        if fact["folds_to_ascii"] and not {"i", "k"}.isdisjoint(wanted.lower()):
            raise _refused(
                condition,
                f"metadata key {condition.key!r} may hold U+0130 or U+212A (Kelvin sign), which "
                "Python's lower() turns into 'i' and 'k' and Elasticsearch does not",
            )
        return _substring(field, wanted, fold=True)
    if op in ("any", "all"):
        items = _iterated(condition)
        if any(not isinstance(item, str) for item in items):
            raise _refused(
                condition,
                f"{op!r} on strings raises at a non-string item unless an earlier item decided "
                "(LlamaIndex evaluates them in order), which depends on the data",
            )
        return _either([_substring(field, item) for item in items], op == "all")
    return {"term": {field: ""}}, False  # is_empty


def _string_lists(condition: Condition, _: dict[str, Any]) -> _Present:
    op, wanted, field = condition.op, condition.value, f"metadata.{condition.key}"
    whole = (
        f"metadata key {condition.key!r} holds lists: {op!r} compares whole lists, which "
        "Elasticsearch cannot (it keeps a list as a set of terms); use contains/any/all"
    )
    if op not in ("any", "all"):
        _check(condition, ["x"], "lists of strings")
    if op in ("==", "!=") or op in _RANGE:
        if op in _RANGE or _string_list(wanted):
            raise _refused(condition, whole)
        return _NOTHING if op == "==" else _EVERY  # no list of strings equals it
    if op in ("in", "nin"):
        if any(_string_list(item) for item in _container(condition)):
            raise _refused(condition, whole)
        return _NOTHING if op == "in" else _EVERY
    if op == "contains":
        return ({"term": {field: wanted}}, False) if isinstance(wanted, str) else _NOTHING
    if op in ("any", "all"):
        items = _iterated(condition)
        members = [({"term": {field: i}}, False) if isinstance(i, str) else _NOTHING for i in items]
        return _either(members, op == "all")
    return _NOTHING  # is_empty: a non-empty list is neither "" nor []


def _keywords(condition: Condition, fact: dict[str, Any]) -> _Present:
    if fact["shape"] == "scalar":
        return _strings(condition, fact)
    if fact["shape"] == "list":
        return _string_lists(condition, fact)
    one, many = _strings(condition, fact), _string_lists(condition, fact)
    if one != many:
        raise _refused(
            condition,
            f"metadata key {condition.key!r} holds strings and lists of strings, which "
            'Elasticsearch indexes alike ("x" and ["x"] are one term)',
        )
    return one


def _booleans(condition: Condition, fact: dict[str, Any]) -> _Present:
    """Exact: each boolean that occurs, evaluated as LlamaIndex does."""
    admitted = []
    for value in fact["booleans"]:
        try:
            if matches(condition.op, condition.value, value):
                admitted.append(value)
        except Exception as exc:
            raise _raises(condition, f"the boolean {value!r}", exc) from exc
    if len(admitted) == len(fact["booleans"]):
        return _EVERY
    return ({"term": {f"metadata.{condition.key}": admitted[0]}}, False) if admitted else _NOTHING


def _numbers(condition: Condition, fact: dict[str, Any]) -> _Present:
    """Numbers compare as Python compares them (exactly, True == 1); what the field cannot hold
    becomes a bound it can (an integer for a long, a double for a double)."""
    op, wanted, field = condition.op, condition.value, f"metadata.{condition.key}"
    _check(condition, 1, "numbers")  # raises for contains, text_match, non-empty any/all
    long = fact["type"] == "long"
    if op in ("==", "!=", "in", "nin"):
        items = [wanted] if op in ("==", "!=") else _container(condition)
        exact = _as_long if long else _as_double
        present = _terms(field, [v for item in items if (v := exact(item)) is not None])
        present = present if op in ("==", "in") else _negation(present)
    elif op in _RANGE:
        present = _range(field, op, wanted, long)
    else:
        return _EVERY if op == "all" else _NOTHING  # any/all of nothing, is_empty
    if fact.get("inexact") and present[0] is not None:
        raise _refused(
            condition,
            f"metadata key {condition.key!r} holds floats and integers beyond 2**53, which "
            "Elasticsearch's double field rounds",
        )
    return present


_TRANSLATIONS = {"keyword": _keywords, "boolean": _booleans, "long": _numbers, "double": _numbers}


def _as_long(value: Any) -> int | None:
    """The int64 equal to ``value`` (True == 1 == 1.0), if any."""
    if isinstance(value, float):
        value = int(value) if math.isfinite(value) and value.is_integer() else None
    return int(value) if isinstance(value, int) and value in _LONG else None


def _as_double(value: Any) -> float | None:
    """The finite double equal to ``value``, if any."""
    if isinstance(value, int):
        try:
            exact = float(value)
        except OverflowError:
            return None
        return exact if exact == value else None
    return value if isinstance(value, float) and math.isfinite(value) else None


def _range(field: str, op: str, wanted: int | float, long: bool) -> _Present:
    """``x op wanted`` as one inclusive bound of the field's type: an integer for a long (x > 1.5
    is x >= 2), a double for a double (x > 2**53 + 1 is x >= 2**53 + 2)."""
    lower = op[0] == ">"
    if isinstance(wanted, float) and not math.isfinite(wanted):
        return _EVERY if not math.isnan(wanted) and lower == (wanted < 0) else _NOTHING
    bound: int | float
    least: int | float
    most: int | float
    if long:
        least, most = _LONG.start, _LONG.stop - 1
        if lower:
            bound = math.floor(wanted) + 1 if op == ">" else math.ceil(wanted)
        else:
            bound = math.ceil(wanted) - 1 if op == "<" else math.floor(wanted)
    else:
        least, most = -sys.float_info.max, sys.float_info.max
        try:
            near = float(wanted)
        except OverflowError:  # beyond every double
            near = math.inf if wanted > 0 else -math.inf
        if near != wanted:  # no double equals it: > is >=, < is <=
            above = near if near > wanted else math.nextafter(near, math.inf)
            below = near if near < wanted else math.nextafter(near, -math.inf)
            bound = above if lower else below
        elif op in (">", "<"):
            bound = math.nextafter(near, math.inf if lower else -math.inf)
        else:
            bound = near
        if bound == 0:  # Elasticsearch orders -0.0 below 0.0; Python has them equal
            bound = -0.0 if lower else 0.0
    if (bound <= least) if lower else (bound >= most):
        return _EVERY
    if (bound > most) if lower else (bound < least):
        return _NOTHING
    return {"range": {field: {"gte" if lower else "lte": bound}}}, False


def _terms(field: str, values: list[Any]) -> _Present:
    ordered = sorted(set(values))
    if any(isinstance(v, float) and v == 0 for v in ordered):
        ordered = [v for v in ordered if v != 0] + [-0.0, 0.0]  # two terms in a double field
    if len(ordered) < 2:
        return ({"term": {field: ordered[0]}}, False) if ordered else _NOTHING
    return {"terms": {field: ordered}}, False


def _substring(field: str, needle: str, fold: bool = False) -> _Present:
    if not needle:
        return _EVERY
    escaped = needle.replace("\\", "\\\\").replace("*", "\\*").replace("?", "\\?")
    wildcard: dict[str, Any] = {"value": f"*{escaped}*"}
    if fold:
        wildcard["case_insensitive"] = True
    return {"wildcard": {field: wildcard}}, False


def _either(parts: list[_Present], every: bool) -> _Present:
    """All (``every``) or any of positive parts."""
    if every:
        if _NOTHING in parts:
            return _NOTHING
        queries = [q for q, _ in parts if q is not None]
        return (_and(queries), False) if queries else _EVERY
    if _EVERY in parts:
        return _EVERY
    queries = [q for q, _ in parts if q is not None]
    return (_or(queries), False) if queries else _NOTHING


def _substrings(condition: Condition) -> list[str]:
    text: str = condition.value
    if len(text) > _MAX_SUBSTRINGS_OF:
        raise _refused(
            condition,
            f"'in' a string admits its substrings, listed as terms up to {_MAX_SUBSTRINGS_OF} "
            "characters",
        )
    return [text[i:j] for i in range(len(text) + 1) for j in range(i, len(text) + 1)]


def _container(condition: Condition) -> list[Any]:
    """The items ``value in wanted`` compares with (a dict: its keys)."""
    wanted = condition.value
    if isinstance(wanted, list | tuple | dict):
        return list(wanted)
    raise _refused(condition, f"'in' a {type(wanted).__name__} is not supported")


def _iterated(condition: Condition) -> list[Any]:
    """The items any/all go through (a string: its characters)."""
    wanted = condition.value
    if isinstance(wanted, str | list | tuple | dict):
        return list(wanted)
    raise _refused(
        condition, f"LlamaIndex raises TypeError: {type(wanted).__name__} is not iterable"
    )


def _negation(present: _Present) -> _Present:
    return present[0], not present[1]


def _string_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def _check(condition: Condition, sample: Any, holds: str) -> None:
    """Refuse what LlamaIndex raises on (it raises alike for every value of these types)."""
    try:
        matches(condition.op, condition.value, sample)
    except Exception as exc:
        raise _raises(condition, holds, exc) from exc


def _encodable(value: Any) -> bool:
    if isinstance(value, str):
        return not any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, list | tuple):
        return all(_encodable(item) for item in value)
    if isinstance(value, dict):
        return all(_encodable(k) and _encodable(v) for k, v in value.items())
    return True


def _raises(condition: Condition, holds: str, exc: Exception) -> UnsupportedFilter:
    return _refused(
        condition,
        f"metadata key {condition.key!r} holds {holds}, on which LlamaIndex raises "
        f"{type(exc).__name__} ({exc})",
    )


def _refused(condition: Condition, why: str) -> UnsupportedFilter:
    shown = repr(condition.value)
    shown = shown if len(shown) <= 80 else f"{shown[:77]}..."
    return UnsupportedFilter(
        f"filter {condition.key!r} {condition.op} {shown} cannot be served by Elasticsearch: {why}"
    )
