"""Metadata filters as SQL on a loaded index's JSONB metadata: the chunks ``functions.filters``
admits, or refused as it refuses.

PostgreSQL keeps each chunk's metadata as LlamaIndex's ``node_to_metadata_dict`` writes it (the
``metadata_`` column of ``PGVectorStore``'s table; filters read ``filter_``, the same without the
node's JSON, small and in the row), JSON values as they are: strings, numbers, booleans, null,
lists and objects stay distinct, and a missing key is SQL NULL. So no condition is
translated operator by operator (Python's comparisons and PostgreSQL's disagree on mixed types,
``True == 1``, substrings of lists...). Instead, as ``functions.filters`` does on an artifact, a
condition is evaluated with LlamaIndex's own verdict (``filters.matches``) on each distinct value
its key takes in the index (``Columns``: the artifact's ``columns.json``, stored beside the table
at load), and the SQL admits the chunks whose value is one of those admitted:

    missing key refused     COALESCE(filter_ -> key IN (admitted), FALSE)
    missing key admitted    NOT COALESCE(filter_ -> key IN (refused), FALSE)

whichever list is shorter (one JSONB array parameter, unpacked into a hashed subplan; a key with
values beyond the columns, format 1's lists and objects, takes the first form only where the
missing key's verdict holds for them too, as there). JSONB
equality is exact and typed (1 = 1.0, but not true; no collation; -0 = 0), and the distinct
values are the ones the chunks hold, so the result is the artifact's on every filter. What
LlamaIndex raises on (a string ordered against a number) is refused with ``UnsupportedFilter``
whenever a chunk of the index holds such a value (the artifact refuses only for chunks in an
id-restricted scope: with ``node_ids``/``doc_ids`` this is stricter). ``doc_id``, ``document_id``
and ``ref_doc_id`` are the chunk's document id ("None" when empty), ``_node_type`` is "TextNode",
``_node_content`` is never a filterable value. Keys and values are parameters, never SQL text.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Protocol

from psycopg.types.json import Jsonb

from .errors import UnsupportedFilter
from .filters import OPERATORS, Condition, FilterGroup, as_llamaindex_sees, matches

__all__ = ["DOCUMENT_KEY", "Columns", "Predicate", "pg_filter"]

# (SQL with %s placeholders, their parameters, in order)
Predicate = tuple[str, list[Any]]
_TRUE: Predicate = ("TRUE", [])
_FALSE: Predicate = ("FALSE", [])
DOCUMENT_KEY = "doc_id"  # where Columns keeps the distinct document ids
_DOCUMENT_KEYS = frozenset({"doc_id", "document_id", "ref_doc_id"})
_NODE_TYPE = "TextNode"


class Columns(Protocol):
    """The distinct metadata values of one loaded index."""

    @property
    def complete(self) -> bool:
        """Whether every value a chunk holds is among its key's values (format 2 on)."""

    def values(self, key: str) -> list[Any] | None:
        """The distinct values of ``key`` (``DOCUMENT_KEY``: the document ids); None when no
        chunk has it."""


def pg_filter(
    where: FilterGroup | None,
    columns: Columns,
    *,
    node_ids: Collection[str] | None = None,
    doc_ids: Collection[str] | None = None,
) -> Predicate:
    """The WHERE condition admitting what ``Filters.mask`` admits within the id scope
    (``node_ids``/``doc_ids`` None: no restriction; empty: nothing)."""
    parts: list[Predicate] = []
    if node_ids is not None:
        parts.append(("node_id = ANY(%s::text[])", [sorted(set(node_ids))]) if node_ids else _FALSE)
    if doc_ids is not None:
        scope = ("(filter_ ->> 'ref_doc_id') = ANY(%s::text[])", [sorted(set(doc_ids))])
        parts.append(scope if doc_ids else _FALSE)
    if where is not None:
        parts.append(_group(where, columns))
    return _and(parts)


def _group(where: FilterGroup, columns: Columns) -> Predicate:
    if where.combine not in ("and", "or", "not"):
        raise UnsupportedFilter(f"filter condition {where.combine!r} is not supported")
    if not where.items:
        return _TRUE
    parts = [
        _group(item, columns) if isinstance(item, FilterGroup) else _condition(item, columns)
        for item in where.items
    ]
    if where.combine == "and":
        return _and(parts)
    either = _or(parts)
    return either if where.combine == "or" else _not(either)


def _and(parts: list[Predicate]) -> Predicate:
    parts = [part for part in parts if part != _TRUE]
    if _FALSE in parts:
        return _FALSE
    return _joined(parts, " AND ") if parts else _TRUE


def _or(parts: list[Predicate]) -> Predicate:
    parts = [part for part in parts if part != _FALSE]
    if _TRUE in parts:
        return _TRUE
    return _joined(parts, " OR ") if parts else _FALSE


def _not(part: Predicate) -> Predicate:
    if part in (_TRUE, _FALSE):
        return _FALSE if part == _TRUE else _TRUE
    return f"NOT ({part[0]})", part[1]


def _joined(parts: list[Predicate], glue: str) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return glue.join(f"({text})" for text, _ in parts), [p for _, params in parts for p in params]


def _condition(condition: Condition, columns: Columns) -> Predicate:
    key, op, wanted = condition.key, condition.op, condition.value
    if op not in OPERATORS:
        raise UnsupportedFilter(f"filter operator {op!r} is not supported")
    absent = matches(op, wanted, None)  # a missing key and null: LlamaIndex's None; never raises
    complete = True
    if key in _DOCUMENT_KEYS:
        values = columns.values(DOCUMENT_KEY)
    elif key == "_node_type":
        values = [_NODE_TYPE]
    elif key == "_node_content":
        values = None
    else:
        values = columns.values(key)
        complete = columns.complete
    if values is None:  # no chunk has the key
        return _TRUE if absent else _FALSE
    seen = [as_llamaindex_sees(value) for value in values]
    admitted: list[Any] = []
    refused: list[Any] = []
    for value in seen:
        try:
            verdict = matches(op, wanted, value)
        except Exception as exc:  # LlamaIndex raises on a value a chunk holds
            raise UnsupportedFilter(
                f"filter {key!r} {op} {_shown(wanted)} cannot be evaluated on the value "
                f"{_shown(value)} (LlamaIndex raises {type(exc).__name__}: {exc})"
            ) from exc
        (admitted if verdict else refused).append(value)
    if not complete and not _same_for_every_non_scalar(op, wanted):
        raise UnsupportedFilter(
            f"filter {key!r} {op} {_shown(wanted)}: the index is in format 1, which kept only "
            f"scalar metadata values, so chunks where {key!r} is a list, an object, null or "
            "missing cannot be told apart for this operator; rebuild the index"
        )
    field = "(filter_ -> %s)"
    among = f"{field} IN (SELECT jsonb_array_elements(%s::jsonb))"  # a hashed subplan
    if not absent and (not complete or len(admitted) <= len(refused)):
        if not admitted:
            return _FALSE
        return f"COALESCE({among}, FALSE)", [key, Jsonb(admitted)]
    if not refused:
        return _TRUE if absent else (f"{field} IS NOT NULL", [key])
    if absent:
        return f"NOT COALESCE({among}, FALSE)", [key, Jsonb(refused)]
    return f"({field} IS NOT NULL AND NOT {among})", [key, key, Jsonb(refused)]


def _same_for_every_non_scalar(op: str, wanted: Any) -> bool:
    """Whether ``op wanted`` gives the missing key's verdict, never raising, for null and every
    list and object (``functions.filters``' rule for format 1 indexes)."""
    nested = (list, tuple, dict)
    if op in ("==", "!="):
        return not isinstance(wanted, nested)
    if op in ("in", "nin"):
        return isinstance(wanted, list | tuple) and not any(
            isinstance(item, nested) for item in wanted
        )
    return False


def _shown(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else f"{shown[:77]}..."
