"""What the builder tells the person (or the CronJob log) watching it.

On a terminal each phase — reading, chunking, embedding, uploading — gets a tqdm progress bar
with counts, rate and ETA. Elsewhere (a CronJob's log) there are no bars: one log line per phase
when it ends. Either way every phase's count and time are kept for the summary table printed at
the end, and for the ``index.published`` event, with the files left out as unreadable.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TextIO

__all__ = ["Phase", "Progress", "human_bytes"]

logger = logging.getLogger("index_builder")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass
class Phase:
    """One phase's count (in its unit) and duration."""

    name: str
    unit: str
    total: int | None
    done: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    _bar: Any = None

    def update(self, n: int = 1) -> None:
        """``n`` more items (or bytes) done."""
        self.done += n
        if self._bar is not None:
            self._bar.update(n)

    @property
    def rate(self) -> str:
        if self.seconds <= 0 or self.done == 0:
            return ""
        per_second = self.done / self.seconds
        if self.unit == "B":
            return f"{human_bytes(per_second)}/s"
        return f"{per_second:,.0f} {self.unit}/s"

    @property
    def amount(self) -> str:
        return human_bytes(self.done) if self.unit == "B" else f"{self.done:,} {self.unit}"


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError):
        return 0


class Progress:
    """Phases of one build; bars only when ``stream`` is a terminal (or ``bars`` says so)."""

    def __init__(self, stream: TextIO | None = None, *, bars: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars = self.stream.isatty() if bars is None else bars
        self.phases: list[Phase] = []
        self.skipped: list[tuple[str, str]] = []  # (source, reason) of files left out

    @contextmanager
    def phase(self, name: str, total: int | None, unit: str) -> Iterator[Phase]:
        """Time a phase; ``update`` it as work gets done."""
        phase = Phase(name, unit, total)
        if self.bars:
            from tqdm import tqdm

            sized = _columns(self.stream) > 0  # a terminal that says how wide it is
            phase._bar = tqdm(
                total=total,
                desc=f"{name:<9}",
                unit=unit,
                unit_scale=unit == "B",
                unit_divisor=1024,
                file=self.stream,
                dynamic_ncols=sized,
                ncols=None if sized else 100,
                nrows=None if sized else 24,  # tqdm draws nothing on a terminal of 0 rows
                leave=True,
            )
        started = time.perf_counter()
        try:
            yield phase
        except BaseException:
            phase.seconds = time.perf_counter() - started
            phase.notes.append("failed")
            self.phases.append(phase)
            logger.info("%s: failed after %s in %.1f s", name, phase.amount, phase.seconds)
            raise
        else:
            phase.seconds = time.perf_counter() - started
            self.phases.append(phase)
            if not self.bars:
                logger.info(
                    "%s: %s in %.1f s%s",
                    name,
                    phase.amount,
                    phase.seconds,
                    f" ({phase.rate})" if phase.rate else "",
                )
        finally:
            if phase._bar is not None:
                phase._bar.close()
                phase._bar = None

    def summary(self) -> str:
        """The phases as a table."""
        rows = [("phase", "done", "time", "rate", "")]
        rows += [
            (p.name, p.amount, f"{p.seconds:.1f} s", p.rate, "; ".join(p.notes))
            for p in self.phases
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()

        rule = "  ".join("-" * w for w in widths[:4])
        return "\n".join([line(rows[0]), rule, *(line(row) for row in rows[1:])])
