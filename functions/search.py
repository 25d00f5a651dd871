"""Exact nearest-neighbour search over an artifact, with metadata filters.

Vectors are L2-normalised at build time, so cosine similarity is one matrix-vector product;
``argpartition`` picks the top k without sorting every score. Filters are evaluated on each key's
few distinct values first and then applied to the int32 code column with ``np.isin``, so a filter
costs one pass over a small integer column, never a parse of metadata.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .artifact import Artifact, NodeRecord
from .errors import InvalidRequest, UnsupportedFilter

__all__ = ["Condition", "FilterGroup", "Hit", "SearchIndex", "equality_filter"]

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "in": lambda value, wanted: value in wanted,
    "nin": lambda value, wanted: value not in wanted,
}


@dataclass(frozen=True)
class Condition:
    """``metadata[key] <op> value``; rows without the key never match."""

    key: str
    op: str
    value: Any


@dataclass(frozen=True)
class FilterGroup:
    """Conditions (or nested groups) combined with ``and`` / ``or``."""

    items: tuple[Condition | FilterGroup, ...]
    combine: Literal["and", "or"] = "and"


@dataclass(frozen=True)
class Hit:
    """One search result: the chunk's row, its cosine similarity and its record."""

    row: int
    score: float
    record: NodeRecord


def equality_filter(filters: dict[str, Any]) -> FilterGroup | None:
    """The HTTP API's ``{"key": value}`` filters: every key must equal its value."""
    if not filters:
        return None
    return FilterGroup(tuple(Condition(key, "==", value) for key, value in filters.items()))


class SearchIndex:
    """Exact cosine search over an artifact's memory-mapped vectors."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.vectors = artifact.vectors
        self.dim = artifact.manifest.embedding.dim
        self._keys = {key: k for k, key in enumerate(artifact.columns)}

    def __len__(self) -> int:
        return len(self.artifact)

    def search(
        self, query: npt.NDArray[np.float32], top_k: int, where: FilterGroup | None = None
    ) -> list[Hit]:
        """The ``top_k`` rows most similar to ``query`` among those ``where`` admits, best first."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.dim:
            raise InvalidRequest(
                f"query vector has {query.shape[0]} dimensions, the index {self.dim}"
            )
        norm = float(np.linalg.norm(query))
        if norm > 0:
            query = query / norm
        rows: npt.NDArray[np.intp] | None = None
        if where is not None:
            rows = np.flatnonzero(self.mask(where))
            scores = self.vectors[rows] @ query
        else:
            scores = self.vectors @ query
        k = min(top_k, scores.shape[0])
        if k <= 0:
            return []
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.argsort(-scores[best], kind="stable")]
        picked = rows[best] if rows is not None else best
        return [
            Hit(int(row), float(scores[i]), self.artifact.record(int(row)))
            for row, i in zip(picked, best, strict=True)
        ]

    def mask(self, where: FilterGroup) -> npt.NDArray[np.bool_]:
        """The rows a filter admits."""
        masks = [
            self.mask(item) if isinstance(item, FilterGroup) else self._condition(item)
            for item in where.items
        ]
        if not masks:
            return np.ones(len(self), dtype=bool)
        reduce = np.logical_and if where.combine == "and" else np.logical_or
        return reduce.reduce(masks)  # type: ignore[no-any-return]

    def _condition(self, condition: Condition) -> npt.NDArray[np.bool_]:
        test = _OPS.get(condition.op)
        if test is None:
            raise UnsupportedFilter(f"filter operator {condition.op!r} is not supported")
        if condition.op in ("in", "nin") and not isinstance(condition.value, list | tuple):
            raise UnsupportedFilter(f"filter {condition.key!r} {condition.op} needs a list")
        k = self._keys.get(condition.key)
        if k is None:
            return np.zeros(len(self), dtype=bool)
        matching = [
            code
            for code, value in enumerate(self.artifact.columns[condition.key])
            if _safe(test, value, condition.value)
        ]
        return np.isin(self.artifact.codes[k], matching)


def _safe(test: Callable[[Any, Any], bool], value: Any, wanted: Any) -> bool:
    try:
        return bool(test(value, wanted))
    except TypeError:
        # Comparing a string with a number: that value does not match; it is not an error.
        return False
