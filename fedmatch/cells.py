"""Several runs in one `flwr run`: the cells file and its status file.

Each `flwr run` pays a fixed start-up (a simulation process, Ray actors that import
torch and fedmatch, the clients' data) that is several times longer than a small run's
rounds.  A benchmark grid therefore hands one `flwr run` a *cells file*, run-config key
``cells-file``: the ServerApp runs the cells one after another on the same SuperNodes
and actors, each with its own run config and run directory, exactly as if each had
been its own `flwr run` (``strategies/server_app.py``; the clients take the cell's run
config from every message, ``clients/client_app.py``).

The cells file (JSON, written by ``fedmatch bench``)::

    {"cells": [{"name": "strategy-fedavg_seed-0", "run-config": {...}}, ...]}

where ``run-config`` overrides the app's run config (``runs-dir``, ``run-name`` and
``resume`` included).  Beside it the ServerApp appends one JSON line per finished cell
to ``<cells-file>.status.jsonl``: ``{"cell", "status": "done" | "failed", "error",
"seconds"}``, so the caller learns each cell's fate even when the whole run dies later.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

Scalar = str | int | float | bool

# The config record, in every message of a cell, that carries the cell's run-config
# overrides (``strategies/cell_grid.py`` adds it, ``clients/client_app.py`` applies it).
CELL_RECORD = "fedmatch-cell-run-config"

# Lines the ServerApp logs around each cell; `fedmatch bench` follows them in the stream.
START_MARK = "fedmatch cell start:"
END_MARK = "fedmatch cell end:"


class CellsFileError(ValueError):
    """The cells file is missing or malformed."""


@dataclass(frozen=True)
class CellSpec:
    name: str
    run_config: dict[str, Scalar]


@dataclass(frozen=True)
class CellStatus:
    cell: str
    status: str  # "done" | "failed"
    error: str
    seconds: float


def status_path(cells_file: str | Path) -> Path:
    return Path(f"{cells_file}.status.jsonl")


def write_cells(path: Path, cells: list[CellSpec]) -> None:
    """Write a cells file (and remove a status file left by an earlier run of it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"cells": [{"name": c.name, "run-config": c.run_config} for c in cells]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)
    status_path(path).unlink(missing_ok=True)


def read_cells(path: str | Path) -> list[CellSpec]:
    """The cells of ``path``; ``CellsFileError`` names what is wrong."""
    where = f"run-config key 'cells-file' = {str(path)!r}"
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except FileNotFoundError:
        raise CellsFileError(f"{where}: no such file") from None
    except (OSError, ValueError, RecursionError) as err:
        # ValueError: not JSON, not UTF-8, or a NUL in the path; RecursionError: nesting.
        raise CellsFileError(f"{where}: cannot be read as JSON ({err!r})") from None
    cells = data.get("cells") if isinstance(data, Mapping) else None
    if not isinstance(cells, list) or not cells:
        raise CellsFileError(f'{where}: expected {{"cells": [...]}} with at least one cell')
    specs, names = [], set()
    for index, cell in enumerate(cells):
        name = cell.get("name") if isinstance(cell, Mapping) else None
        overrides = cell.get("run-config") if isinstance(cell, Mapping) else None
        if not isinstance(name, str) or not name or not isinstance(overrides, Mapping):
            raise CellsFileError(
                f"{where}: cell {index} needs a non-empty 'name' and a 'run-config' table"
            )
        if name in names:
            raise CellsFileError(f"{where}: cell name {name!r} appears twice")
        bad = [k for k, v in overrides.items() if not isinstance(v, str | int | float | bool)]
        if bad:
            raise CellsFileError(f"{where}: cell {name!r}: non-scalar value for {bad}")
        if "cells-file" in overrides:
            raise CellsFileError(f"{where}: cell {name!r} may not set 'cells-file' itself")
        names.add(name)
        specs.append(CellSpec(name, dict(overrides)))
    return specs


def append_status(cells_file: str | Path, status: CellStatus) -> None:
    line = json.dumps(
        {
            "cell": status.cell,
            "status": status.status,
            "error": status.error,
            "seconds": status.seconds,
        }
    )
    # One short line per append: a reader never sees half of it in practice, and
    # read_status skips a torn last line if the process died mid-write.
    with status_path(cells_file).open("a") as f:
        f.write(line + "\n")


def read_status(cells_file: str | Path) -> dict[str, CellStatus]:
    path = status_path(cells_file)
    found: dict[str, CellStatus] = {}
    if not path.exists():
        return found
    for number, line in enumerate(path.read_bytes().splitlines(), start=1):
        try:
            item = json.loads(line)
            status = CellStatus(
                str(item["cell"]),
                str(item["status"]),
                str(item.get("error", "")),
                float(item.get("seconds", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as err:
            # A torn line of a killed run, or damage: that cell counts as not finished.
            log.warning("%s:%d: skipping a malformed status line (%r)", path, number, err)
            continue
        found[status.cell] = status
    return found
