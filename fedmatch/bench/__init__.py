"""Benchmark grids: a suite file, one `flwr run` per cell, resume, and a report at the end.

A suite (``benchmarks/suites/*.toml``) holds a base run config, axes (lists of values
for run-config keys, e.g. ``strategy``, ``partitioning``, ``seed``) and the federation
settings.  The grid is the Cartesian product of the axes; each cell is one real
``flwr run`` simulation writing one run directory under ``<out>/runs/<cell-name>``.

Layout of an output folder::

    suite.toml         the suite file as last run
    bench-state.json   every cell's status (done / failed / ...), error, timings
    runs/<cell>/       the cells' run directories (see fedmatch.results)
    logs/<cell>.log    each cell's `flwr run` output, every line stamped with the
                       seconds since the command started (a per-cell start-up profile)
    report/            fedmatch.report output for the finished cells

Start-up is paid once per grid: one private SuperLink serves every cell, and with
``shared-ray`` (the default) one Ray head is started before the SuperLink, which
passes ``RAY_ADDRESS`` on to every simulation, so Flower's Ray backend attaches to it
instead of starting Ray for each cell.

Resume: a cell whose ``summary.json`` exists (and whose saved config is the cell's) is
skipped; a cell with a ``config.json`` but no summary (interrupted or failed) is run
again with ``resume=true`` and continues from its checkpoint; a failed cell is recorded
with its error and the grid goes on.

Modules: ``suite`` (the suite file), ``planning`` (cells and what to do with each),
``launch`` (the app snapshot and the shared Ray head), ``runner`` (a grid end to end),
``batch`` (one `flwr run` of several cells), ``state`` (``bench-state.json``, outcomes),
``progress`` (progress bar, ETA, outcome lines).
"""

from fedmatch.bench.batch import CELL_FILE, TIMELINE_MARKS
from fedmatch.bench.launch import RayHead, snapshot_app
from fedmatch.bench.planning import BenchError, Cell, PlannedCell, cell_name, plan
from fedmatch.bench.progress import iter_outcome_lines
from fedmatch.bench.runner import default_out_dir, run_suite
from fedmatch.bench.state import STATE_FILE, BenchResult, CellOutcome
from fedmatch.bench.suite import RESERVED_KEYS, Federation, ReportOptions, Suite, SuiteError

__all__ = [
    "CELL_FILE",
    "RESERVED_KEYS",
    "STATE_FILE",
    "TIMELINE_MARKS",
    "BenchError",
    "BenchResult",
    "Cell",
    "CellOutcome",
    "Federation",
    "PlannedCell",
    "RayHead",
    "ReportOptions",
    "Suite",
    "SuiteError",
    "cell_name",
    "default_out_dir",
    "iter_outcome_lines",
    "plan",
    "run_suite",
    "snapshot_app",
]
