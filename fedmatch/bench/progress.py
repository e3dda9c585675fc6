"""What a grid shows while it runs and when it ends: progress bar, ETA, outcome lines."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedmatch.bench.planning import PlannedCell
from fedmatch.bench.state import STATE_FILE, BenchResult, CellOutcome

log = logging.getLogger("fedmatch.bench")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ProgressBar:
    """A rich progress bar over cells (ETA from the cells run so far), or nothing."""

    def __init__(self, total: int, done: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress: Any = None
        self._task: Any = None
        self._moved: list[logging.StreamHandler] = []

    def __enter__(self) -> ProgressBar:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA {task.fields[eta]}"),
            )
            self._progress.__enter__()
            # Log lines must go through rich's stderr proxy to print above the bar.
            self._moved = []
            for handler in logging.getLogger("fedmatch").handlers:
                if isinstance(handler, logging.StreamHandler) and handler.stream is sys.__stderr__:
                    self._moved.append(handler)
                    handler.setStream(sys.stderr)
            self._task = self._progress.add_task(
                "cells", total=self.total, completed=self.done, eta="?"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            for handler in self._moved:
                handler.setStream(sys.__stderr__)
            self._progress.__exit__(*exc)

    def start_cell(self, name: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=name)

    def finish_cell(self, eta_seconds: float) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.update(self._task, advance=1, eta=format_duration(eta_seconds))


class Tracker:
    """Progress over cells: the bar, the ETA, and a log line per settled cell."""

    def __init__(self, total: int, bar: ProgressBar) -> None:
        self.total, self.bar = total, bar
        self.settled: list[float] = []  # seconds per settled cell, launch costs included
        self.since = time.perf_counter()

    def start(self, planned: PlannedCell) -> None:
        log.info(
            "cell %d/%d %s: %s (%s)",
            len(self.settled) + 1,
            self.total,
            planned.cell.name,
            "resuming" if planned.action == "resume" else "starting",
            planned.reason,
        )
        self.bar.start_cell(planned.cell.name)

    def settle(self, outcome: CellOutcome, log_path: Path) -> None:
        now = time.perf_counter()
        self.settled.append(now - self.since)
        self.since = now
        remaining = self.total - len(self.settled)
        eta = remaining * sum(self.settled) / len(self.settled)
        self.bar.finish_cell(eta)
        if outcome.status == "done":
            log.info(
                "cell %s done in %.0f s (%d rounds, %.1f s outside rounds); ETA %s",
                outcome.name,
                outcome.wall_seconds,
                outcome.rounds_run,
                outcome.overhead_seconds,
                format_duration(eta),
            )
        else:
            log.error(
                "cell %s FAILED after %.0f s: %s (log: %s); ETA %s",
                outcome.name,
                outcome.wall_seconds,
                outcome.error.splitlines()[0] if outcome.error else "?",
                log_path,
                format_duration(eta),
            )


def iter_outcome_lines(result: BenchResult) -> Iterator[str]:
    """Human-readable lines about a finished grid (for the CLI)."""
    counts: dict[str, int] = {}
    for outcome in result.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    yield (
        f"suite finished in {format_duration(result.wall_seconds)}: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    )
    for outcome in result.failed:
        first = outcome.error.splitlines()[0] if outcome.error else "?"
        yield f"  FAILED {outcome.name}: {first}"
    if result.report_dir is not None:
        yield f"report: {result.report_dir / 'report.md'}"
    yield f"state: {result.out_dir / STATE_FILE}"
