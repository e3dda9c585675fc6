"""Outcomes of cells and of a grid, and the ``bench-state.json`` file that records them."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from fedmatch.bench.planning import Cell
from fedmatch.bench.suite import Suite
from fedmatch.results import atomic_write_bytes

STATE_FILE = "bench-state.json"


@dataclass
class CellOutcome:
    name: str
    status: Literal["done", "skipped", "failed", "interrupted"]
    wall_seconds: float = 0.0
    rounds_run: int = 0
    round_seconds: float = 0.0  # Σ round-seconds of the rounds this attempt ran
    error: str = ""
    timeline: dict[str, float] = field(default_factory=dict)

    @property
    def overhead_seconds(self) -> float:
        """Everything outside the rounds: CLI, simulation and client start-up, tear-down."""
        return self.wall_seconds - self.round_seconds


@dataclass
class BenchResult:
    out_dir: Path
    outcomes: list[CellOutcome]
    report_dir: Path | None
    wall_seconds: float
    ray_jobs: int | None = None  # simulations that attached to the shared Ray head

    @property
    def failed(self) -> list[CellOutcome]:
        return [o for o in self.outcomes if o.status in ("failed", "interrupted")]


class BenchState:
    """``bench-state.json``: each cell's last outcome; rewritten atomically after each."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def open(cls, path: Path, suite: Suite) -> BenchState:
        data: dict[str, Any] = {}
        if path.exists():
            with contextlib.suppress(json.JSONDecodeError):
                data = json.loads(path.read_text())
        data["suite"] = suite.name
        data["federation"] = suite.federation.model_dump(by_alias=True)
        data.setdefault("cells", {})
        state = cls(path, data)
        state._write()
        return state

    def update(self, cell: Cell, outcome: CellOutcome, *, skipped: bool = False) -> None:
        entry = self.data["cells"].setdefault(cell.name, {})
        entry["axes"] = cell.axes
        if skipped:
            entry["last-check"] = "skipped (finished)"
            if entry.get("status") != "done":
                entry["status"] = "done"
        else:
            entry.update(
                status=outcome.status,
                error=outcome.error,
                wall_seconds=round(outcome.wall_seconds, 2),
                rounds_run=outcome.rounds_run,
                round_seconds=round(outcome.round_seconds, 2),
                overhead_seconds=round(outcome.overhead_seconds, 2),
                timeline=outcome.timeline,
                attempts=entry.get("attempts", 0) + 1,
                finished_at=time.strftime("%Y-%m-%d %H:%M:%S"),
            )
            entry.pop("last-check", None)
        self._write()

    def record_batch(
        self, name: str, cells: list[str], wall_seconds: float, marks: Mapping[str, float]
    ) -> None:
        """One `flwr run` of the grid: its cells, wall time and launch phases."""
        self.data.setdefault("batches", {})[name] = {
            "cells": cells,
            "wall_seconds": round(wall_seconds, 2),
            "timeline": dict(marks),
            "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._write()

    def finish(self, wall_seconds: float, shared_ray: bool, ray_jobs: int | None) -> None:
        self.data["last-invocation"] = {
            "wall_seconds": round(wall_seconds, 2),
            "shared_ray": shared_ray,
            "ray_jobs_on_shared_head": ray_jobs,
            "ended_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        self._write()

    def _write(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data, indent=2, sort_keys=True).encode())
