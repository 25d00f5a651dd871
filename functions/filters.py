"""Metadata filters: what LlamaIndex means by them, evaluated on an artifact's filter columns.

The meaning is LlamaIndex's own: ``matches`` is ``build_metadata_filter_fn`` of llama-index-core
0.14 (the evaluation ``SimpleVectorStore`` runs on every node) for one filter and one metadata
value, operator for operator, with Python's comparisons — so ``True == 1 == 1.0`` as there, a
missing key is ``None`` (only ``!=`` and ``nin`` admit it, ``is_empty`` too), and where LlamaIndex
raises (a string compared with a number, ``text_match`` on a number) the filter is refused with
``UnsupportedFilter`` naming the operator: exactly when a chunk in scope holds such a value, since
LlamaIndex raises only when it meets one. The metadata is the node's as LlamaIndex's stores see it
(``node_to_metadata_dict``): dumped in JSON mode, so a non-finite float is null; ``doc_id``,
``document_id`` and ``ref_doc_id`` are the chunk's document id ("None" when empty),
``_node_type`` is "TextNode" and ``_node_content`` is absent.

Two additions. A nested group means what LlamaIndex makes of that group on its own (AND: all,
OR: any, NOT: none, empty: everything); ``SimpleVectorStore`` itself refuses nesting. And a
search may be restricted to some node ids or document ids first; conditions are then evaluated
(and refused) only within that scope, as ``SimpleVectorStore`` does for ``node_ids``.

A condition is evaluated once per distinct value of its key and mapped to chunks through the int32
code column: one pass over a small integer column per condition, no metadata parsed. Format 1
artifacts kept only scalar values (code -1: missing, null, list or object); a condition is
evaluated on such chunks only where those four give the same answer (``==``/``!=`` a scalar,
``in``/``nin`` a list of scalars), and refused otherwise: rebuild the index.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .artifact import Artifact
from .errors import UnsupportedFilter

__all__ = [
    "OPERATORS",
    "Combine",
    "Condition",
    "FilterGroup",
    "Filters",
    "as_llamaindex_sees",
    "equality_filter",
    "matches",
]

Combine = Literal["and", "or", "not"]
Mask = npt.NDArray[np.bool_]

# LlamaIndex's FilterOperator values.
OPERATORS = frozenset(
    {"==", "!=", ">", ">=", "<", "<=", "in", "nin", "any", "all", "contains"}
    | {"text_match", "text_match_insensitive", "is_empty"}
)
_DOCUMENT_KEYS = frozenset({"doc_id", "document_id", "ref_doc_id"})
_NODE_TYPE = "TextNode"  # what the vector store returns; LlamaIndex's _node_type


@dataclass(frozen=True)
class Condition:
    """``metadata[key] <op> value``, with LlamaIndex's meaning of ``op`` (``OPERATORS``)."""

    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class FilterGroup:
    """Conditions (or nested groups): all (``and``), any (``or``) or none (``not``) must match."""

    items: tuple[Condition | FilterGroup, ...]
    combine: Combine = "and"


def equality_filter(filters: dict[str, Any]) -> FilterGroup | None:
    """The HTTP API's ``{"key": value}`` filters: every key must equal its value."""
    if not filters:
        return None
    return FilterGroup(tuple(Condition(key, "==", value) for key, value in filters.items()))


def matches(op: str, wanted: Any, value: Any) -> bool:
    """LlamaIndex's verdict on a chunk whose metadata ``value`` (None when absent) is filtered
    by ``op wanted``; raises where LlamaIndex raises."""
    if op == "is_empty":
        return value is None or value == "" or value == []
    if value is None:
        return op in ("!=", "nin")
    test = _TESTS.get(op)
    if test is None:
        raise UnsupportedFilter(f"filter operator {op!r} is not supported")
    return bool(test(value, wanted))


def _text_match(value: Any, wanted: Any, fold: bool = False) -> bool:
    if not (isinstance(wanted, str) and isinstance(value, str)):
        raise TypeError("text_match needs a string value and string metadata")
    return wanted.lower() in value.lower() if fold else wanted in value


# (metadata value, filter value) -> verdict, each as LlamaIndex writes it (the metadata value on
# the left of comparisons: that is whose __eq__ Python asks first).
_TESTS: dict[str, Callable[[Any, Any], Any]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda value, wanted: value in wanted,
    "nin": lambda value, wanted: value not in wanted,
    "contains": lambda value, wanted: wanted in value,
    "all": lambda value, wanted: all(item in value for item in wanted),
    "any": lambda value, wanted: any(item in value for item in wanted),
    "text_match": _text_match,
    "text_match_insensitive": lambda value, wanted: _text_match(value, wanted, fold=True),
}


class Filters:
    """Evaluates filters and id restrictions on one artifact's columns."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._n = len(artifact)
        self._keys = {key: k for k, key in enumerate(artifact.columns)}
        self._documents: tuple[list[str], npt.NDArray[np.int32]] | None = None
        self._rows: dict[str, int] | None = None
        self._seen_values: dict[str, list[Any]] = {}

    def mask(self, where: FilterGroup, scope: Mask | None = None) -> Mask:
        """The chunks ``where`` admits; conditions are refused only for chunks in ``scope``."""
        if where.combine not in ("and", "or", "not"):
            raise UnsupportedFilter(f"filter condition {where.combine!r} is not supported")
        if not where.items:
            return np.ones(self._n, dtype=bool)
        masks = [
            self.mask(item, scope)
            if isinstance(item, FilterGroup)
            else self._condition(item, scope)
            for item in where.items
        ]
        if where.combine == "and":
            return np.logical_and.reduce(masks)  # type: ignore[no-any-return]
        admitted: Mask = np.logical_or.reduce(masks)
        return admitted if where.combine == "or" else ~admitted

    def scope(
        self, node_ids: Collection[str] | None, doc_ids: Collection[str] | None
    ) -> Mask | None:
        """The chunks with one of ``node_ids`` and of one of ``doc_ids`` (None: no restriction)."""
        scope: Mask | None = None
        if node_ids is not None:
            if self._rows is None:
                self._rows = {node: row for row, node in enumerate(self.artifact.ids()[0])}
            scope = np.zeros(self._n, dtype=bool)
            scope[[self._rows[node] for node in set(node_ids) if node in self._rows]] = True
        if doc_ids is not None:
            values, codes = self._document_column()
            wanted = set(doc_ids)
            codes_wanted = [code for code, doc in enumerate(values) if doc in wanted]
            in_docs = np.isin(codes, codes_wanted)
            scope = in_docs if scope is None else scope & in_docs
        return scope

    def _condition(self, condition: Condition, scope: Mask | None) -> Mask:
        op, wanted = condition.op, condition.value
        if op not in OPERATORS:
            raise UnsupportedFilter(f"filter operator {op!r} is not supported")
        values, codes, known = self._column(condition.key)
        absent = matches(op, wanted, None)  # never raises
        if codes is None:
            codes = np.full(self._n, -1, dtype=np.int32)  # no chunk has the key (format 1: ...)
        verdicts, failures = _verdicts(op, wanted, self._seen(condition.key, values))
        verdicts.append(absent)  # code -1
        in_scope = codes if scope is None else codes[scope]
        if not (known or _same_for_every_non_scalar(op, wanted)) and (in_scope == -1).any():
            raise UnsupportedFilter(
                f"filter {condition.key!r} {op} {wanted!r}: index "
                f"{self.artifact.manifest.index_id} is in format 1, which kept only scalar "
                f"metadata values, so chunks where {condition.key!r} is a list, an object, null "
                "or missing cannot be told apart for this operator; rebuild the index"
            )
        if failures:
            hit = np.isin(in_scope, list(failures))
            if hit.any():
                code = int(in_scope[int(np.argmax(hit))])
                raise UnsupportedFilter(
                    f"filter {condition.key!r} {op} {wanted!r} cannot be evaluated on the value "
                    f"{values[code]!r} (LlamaIndex raises {type(failures[code]).__name__}: "
                    f"{failures[code]})"
                )
        return np.array(verdicts, dtype=bool)[codes]

    def _column(self, key: str) -> tuple[list[Any], npt.NDArray[np.int32] | None, bool]:
        """A key's distinct values, its codes (None: absent everywhere) and whether code -1
        certainly means absent."""
        if key in _DOCUMENT_KEYS:
            return *self._document_column(), True
        if key == "_node_type":
            return [_NODE_TYPE], np.zeros(self._n, dtype=np.int32), True
        if key == "_node_content":
            return [], None, True
        known = self.artifact.complete_columns
        k = self._keys.get(key)
        if k is None:
            return [], None, known
        return self.artifact.columns[key], self.artifact.codes[k], known

    def _seen(self, key: str, values: list[Any]) -> list[Any]:
        """A key's distinct values as LlamaIndex sees them, worked out once per key."""
        seen = self._seen_values.get(key)
        if seen is None:
            seen = self._seen_values[key] = [as_llamaindex_sees(value) for value in values]
        return seen

    def _document_column(self) -> tuple[list[str], npt.NDArray[np.int32]]:
        if self._documents is None:
            docs = [doc or "None" for doc in self.artifact.ids()[1]]
            values, codes = np.unique(np.array(docs, dtype=object), return_inverse=True)
            self._documents = [str(v) for v in values], codes.astype(np.int32).reshape(-1)
        return self._documents


def _verdicts(op: str, wanted: Any, values: list[Any]) -> tuple[list[bool], dict[int, Exception]]:
    """``matches`` for each value (one list comprehension while nothing raises), and what it
    raised for which values."""
    test, admit_none = _TESTS.get(op), op in ("!=", "nin")
    if test is not None:
        try:
            return [admit_none if v is None else bool(test(v, wanted)) for v in values], {}
        except Exception:  # noqa: S110 - some value raises: find which, one by one
            pass
    verdicts: list[bool] = []
    failures: dict[int, Exception] = {}
    for code, value in enumerate(values):
        try:
            verdicts.append(matches(op, wanted, value))
        except Exception as exc:  # LlamaIndex raises here: refused if a chunk in scope has it
            verdicts.append(False)
            failures[code] = exc
    return verdicts, failures


def as_llamaindex_sees(value: Any) -> Any:
    """A metadata value as LlamaIndex's JSON-mode dump leaves it: non-finite floats are null."""
    if type(value) is str:
        return value
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [as_llamaindex_sees(item) for item in value]
    if isinstance(value, dict):
        return {key: as_llamaindex_sees(item) for key, item in value.items()}
    return value


def _same_for_every_non_scalar(op: str, wanted: Any) -> bool:
    """Whether ``op wanted`` gives one answer, never raising, for a missing key, null, and every
    list and object: then a format 1 code -1 is enough to evaluate it."""
    nested = (list, tuple, dict)
    if op in ("==", "!="):
        return not isinstance(wanted, nested)  # a list or an object never equals a scalar
    if op in ("in", "nin"):
        return isinstance(wanted, list | tuple) and not any(
            isinstance(item, nested) for item in wanted
        )
    return False
