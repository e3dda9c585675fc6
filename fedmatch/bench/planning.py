"""Cells of a grid (name, run config) and what to do with each, given the runs dir."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fedmatch.config import RunConfig
from fedmatch.resume import changed_config_keys

_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
Scalar = str | int | float | bool


class BenchError(RuntimeError):
    """An output folder cannot take this grid (it holds results of another config)."""


def cell_name(axes: Mapping[str, Scalar]) -> str:
    """A deterministic, readable directory name: ``strategy-fedavg_seed-0``.

    Characters a run name cannot hold are replaced; when that loses information a
    short hash of the value keeps names of different values apart.
    """
    parts = []
    for key, value in axes.items():
        text = json.dumps(value) if isinstance(value, bool) else str(value)
        safe = _UNSAFE.sub("-", text).strip("-") or "x"
        if safe != text:
            safe += "-" + hashlib.sha256(json.dumps(value).encode()).hexdigest()[:6]
        parts.append(f"{key}-{safe}")
    return "_".join(parts)


@dataclass(frozen=True)
class Cell:
    """One point of the grid."""

    name: str
    axes: dict[str, Scalar]
    overrides: dict[str, Scalar]  # [base] + this cell's axis values
    cfg: RunConfig  # validated, with run-name set (runs-dir is set when run)

    def run_config(self, runs_dir: Path, resume: bool) -> dict[str, Scalar]:
        """The ``--run-config`` of this cell."""
        return {
            **self.overrides,
            "runs-dir": str(runs_dir),
            "run-name": self.name,
            "resume": resume,
        }


# ------------------------------------------------------------------------- planning

Action = Literal["skip", "resume", "run"]


@dataclass(frozen=True)
class PlannedCell:
    cell: Cell
    action: Action
    reason: str


def plan(cells: list[Cell], runs_dir: Path) -> list[PlannedCell]:
    """What to do with each cell, given what ``runs_dir`` already holds.

    Raises ``BenchError`` (before anything runs) when a cell's directory holds a run of
    another config: skipping it would put foreign numbers in the report.
    """
    planned, stale = [], []
    for cell in cells:
        run_dir = runs_dir / cell.name
        config_path = run_dir / "config.json"
        if not config_path.exists():
            planned.append(PlannedCell(cell, "run", "not started"))
            continue
        saved = json.loads(config_path.read_text())["run_config"]
        wanted = RunConfig.from_flower(cell.run_config(runs_dir, resume=False)).to_flower()
        changed = [key for key in changed_config_keys(saved, wanted) if key != "runs-dir"]
        saved_rounds = int(saved.get("num-server-rounds", 0))
        if changed or saved_rounds > cell.cfg.num_server_rounds:
            if saved_rounds > cell.cfg.num_server_rounds:
                changed.append("num-server-rounds")
            details = ", ".join(f"{k}: {saved.get(k)!r} -> {wanted.get(k)!r}" for k in changed)
            stale.append(f"  - {run_dir}: {details}")
            continue
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
        if summary is not None and summary.get("status") != "failed":
            final = summary.get("final_round", 0)
            if final >= cell.cfg.num_server_rounds:
                planned.append(PlannedCell(cell, "skip", "finished"))
                continue
            reason = f"finished {final} of {cell.cfg.num_server_rounds} rounds"
            planned.append(PlannedCell(cell, "resume", reason))
            continue
        planned.append(PlannedCell(cell, "resume", "interrupted or failed before"))
    if stale:
        raise BenchError(
            f"{runs_dir} holds runs whose config differs from this suite's cells (only "
            "num-server-rounds may grow):\n"
            + "\n".join(stale)
            + "\nUse another --out folder, or delete those run directories to redo them."
        )
    return planned
