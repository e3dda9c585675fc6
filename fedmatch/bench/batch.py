"""One `flwr run` of several cells (``fedmatch/cells.py``): stream, logs, timelines, outcomes."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fedmatch.bench.planning import PlannedCell
from fedmatch.bench.progress import Tracker
from fedmatch.bench.state import BenchState, CellOutcome
from fedmatch.bench.suite import Suite
from fedmatch.cells import END_MARK, START_MARK, CellSpec, read_status, write_cells
from fedmatch.localrun import PrivateFlower
from fedmatch.results import atomic_write_bytes, read_metrics

CELL_FILE = "bench-cell.json"  # written into each finished run directory
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

# Lines of a cell's `flwr run` output that mark its start-up phases (first match wins).
TIMELINE_MARKS = {
    "submitted": "Successfully started run",
    "simulation-started": "Starting Flower Simulation",
    "serverapp-ready": "INFO fedmatch: run directory:",
    "clients-ready": " clients (",  # "<strategy> on N clients (...), rounds a..b"
    "first-round-done": "INFO fedmatch: round ",
    "final-summary": "INFO fedmatch: final per-domain",
}


@dataclass
class _Running:
    """What the stream has shown of one cell of a batch."""

    planned: PlannedCell
    rounds_before: int
    started: float | None = None  # seconds since the batch's launch
    ended: float | None = None
    lines: list[str] = field(default_factory=list)
    timeline: dict[str, float] = field(default_factory=dict)


def run_batch(
    flower: PrivateFlower,
    suite: Suite,
    batch: list[PlannedCell],
    out_dir: Path,
    state: BenchState,
    outcomes: dict[str, CellOutcome],
    tracker: Tracker,
) -> list[PlannedCell]:
    """One `flwr run` for ``batch``; returns the cells it never reached."""
    runs_dir, logs_dir = out_dir / "runs", out_dir / "logs"
    fed = suite.federation
    batches_dir = out_dir / "batches"
    index = len(list(batches_dir.glob("batch-*.json"))) if batches_dir.exists() else 0
    cells_file = batches_dir / f"batch-{index:03d}.json"
    write_cells(
        cells_file,
        [
            CellSpec(p.cell.name, p.cell.run_config(runs_dir, resume=p.action == "resume"))
            for p in batch
        ],
    )
    command = flower.command(
        {"cells-file": str(cells_file)},
        fed.num_supernodes,
        _flt(fed.cpus_per_client),
        _flt(fed.gpus_per_client),
    )
    running = {p.cell.name: _Running(p, _completed_rounds(runs_dir / p.cell.name)) for p in batch}
    batch_marks: dict[str, float] = {}
    events: queue.Queue[tuple[str, str, float]] = queue.Queue()
    current: list[_Running] = []  # the cell whose lines the stream shows now
    start = time.perf_counter()
    batch_log = logs_dir / f"batch-{index:03d}.log"
    cell_logs = {name: (logs_dir / f"{name}.log").open("a") for name in running}
    with batch_log.open("a") as log_file:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log_file.write(f"# {stamp} {' '.join(command)}\n")
        for f in cell_logs.values():
            f.write(f"# {stamp} cell of {cells_file} (log: {batch_log})\n")
        process = subprocess.Popen(
            command,
            cwd=flower.app,
            env=flower.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )

        def pump() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                elapsed = round(time.perf_counter() - start, 2)
                clean = _ANSI.sub("", line)
                stamped = f"[{elapsed:8.2f} s] {clean}"
                log_file.write(stamped)
                log_file.flush()
                if START_MARK in clean:
                    name = clean.split(START_MARK, 1)[1].split()[0]
                    if name in running:
                        current[:] = [running[name]]
                        running[name].started = elapsed
                        events.put(("start", name, elapsed))
                cell = current[0] if current else None
                if cell is None:
                    for mark, needle in TIMELINE_MARKS.items():
                        if mark not in batch_marks and needle in clean:
                            batch_marks[mark] = elapsed
                    continue
                cell.lines.append(clean)
                cell_logs[cell.planned.cell.name].write(stamped)
                cell_logs[cell.planned.cell.name].flush()
                for mark, needle in TIMELINE_MARKS.items():
                    if mark not in cell.timeline and needle in clean:
                        cell.timeline[mark] = elapsed
                if END_MARK in clean:
                    cell.ended = elapsed
                    current.clear()
                    events.put(("end", cell.planned.cell.name, elapsed))

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out: _Running | None = None
        killed_for_time = False
        last_start = 0.0
        try:
            while True:
                try:
                    kind, name, elapsed = events.get(timeout=0.5)
                except queue.Empty:
                    kind = ""
                if kind == "start":
                    last_start = elapsed
                    tracker.start(running[name].planned)
                elif kind == "end":
                    first = name == batch[0].cell.name
                    _settle(
                        running[name],
                        batch_marks if first else {},
                        cells_file,
                        runs_dir,
                        suite,
                        flower,
                        state,
                        outcomes,
                    )
                    tracker.settle(outcomes[name], logs_dir / f"{name}.log")
                if kind:
                    continue
                if process.poll() is not None and not reader.is_alive():
                    break
                overdue = time.perf_counter() - start - last_start > fed.cell_timeout
                if overdue and not killed_for_time:
                    timed_out = current[0] if current else None
                    killed_for_time = True
                    process.kill()
                    process.wait()
                    flower.stop()  # ends the run the CLI left behind; the next batch restarts it
        except BaseException:
            process.kill()
            process.wait()
            for cell in running.values():
                if cell.started is not None and cell.ended is None:
                    name = cell.planned.cell.name
                    outcomes[name] = CellOutcome(name, "interrupted", error="interrupted")
                    state.update(cell.planned.cell, outcomes[name])
            raise
        finally:
            reader.join(timeout=10)
            for f in cell_logs.values():
                f.close()
    wall = time.perf_counter() - start
    batch_marks["exit"] = round(wall, 2)

    # A cell the run started but never ended (or the first cell, if it started none)
    # failed with what the output says; the cells after it go into a new batch.
    unreached: list[PlannedCell] = []
    tail_lines = _lines_after_last_end(running, batch_log)
    nothing_started = all(c.started is None for c in running.values())
    for position, cell in enumerate(running.values()):
        name = cell.planned.cell.name
        if cell.ended is not None:
            continue
        if cell.started is None and not (nothing_started and position == 0):
            unreached.append(cell.planned)
            continue
        if killed_for_time and (timed_out is None or cell is timed_out):
            error = f"timed out after {fed.cell_timeout:.0f} s ([federation] cell-timeout)"
        else:
            error = _error_from_output(cell.lines or tail_lines, process.returncode)
        timeline = {**(batch_marks if position == 0 else {}), **cell.timeline}
        outcomes[name] = CellOutcome(
            name,
            "failed",
            wall_seconds=wall - (cell.started or 0.0),
            error=error,
            timeline=timeline,
        )
        state.update(cell.planned.cell, outcomes[name])
        tracker.settle(outcomes[name], logs_dir / f"{name}.log")
    state.record_batch(cells_file.name, [p.cell.name for p in batch], wall, batch_marks)
    return unreached


def _lines_after_last_end(running: Mapping[str, _Running], batch_log: Path) -> list[str]:
    """The batch's output after the last finished cell (where a dead run says why)."""
    lines = batch_log.read_text(errors="replace").splitlines(keepends=True)
    last_end = max((c.ended for c in running.values() if c.ended is not None), default=None)
    if last_end is None:
        return lines
    out = []
    for line in lines:
        try:
            stamp = float(line[1:9])
        except ValueError:
            continue
        if stamp > last_end:
            out.append(line)
    return out


def _settle(
    cell: _Running,
    batch_marks: Mapping[str, float],
    cells_file: Path,
    runs_dir: Path,
    suite: Suite,
    flower: PrivateFlower,
    state: BenchState,
    outcomes: dict[str, CellOutcome],
) -> None:
    """Record a cell the ServerApp finished (done, or failed with its error)."""
    planned = cell.planned.cell
    run_dir = runs_dir / planned.name
    status = read_status(cells_file).get(planned.name)
    rows = [r for r in read_metrics(run_dir) if r.metric == "round-seconds"]
    new_rounds = [r for r in rows if r.round > cell.rounds_before]
    seconds = status.seconds if status else (cell.ended or 0.0) - (cell.started or 0.0)
    outcome = CellOutcome(
        planned.name,
        "done",
        wall_seconds=seconds,
        rounds_run=len(new_rounds),
        round_seconds=sum(r.value for r in new_rounds),
        # Seconds since the batch's launch; the first cell also shows the launch phases.
        timeline={**batch_marks, "cell-start": cell.started or 0.0, **cell.timeline},
    )
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    finished = (
        summary.get("status") != "failed"
        and summary.get("final_round", 0) >= planned.cfg.num_server_rounds
    )
    if summary.get("status") == "failed":
        outcome.status = "failed"
        outcome.error = str(summary.get("error", "failed"))
    elif status is not None and status.status == "failed":
        outcome.status = "failed"
        outcome.error = status.error or _error_from_output(cell.lines, None)
    elif not finished:
        outcome.status = "failed"
        outcome.error = _error_from_output(cell.lines, None)
    else:
        fed = suite.federation
        alone = flower.command(
            planned.run_config(runs_dir, resume=False),
            fed.num_supernodes,
            _flt(fed.cpus_per_client),
            _flt(fed.gpus_per_client),
        )
        atomic_write_bytes(
            run_dir / CELL_FILE,
            json.dumps(
                {
                    "suite": suite.name,
                    "cell": planned.name,
                    "axes": planned.axes,
                    "federation-config": suite.federation_config(),
                    # This cell alone, as one `flwr run`; the grid ran it from a cells file.
                    "command": alone,
                    "cells-file": str(cells_file),
                },
                indent=2,
            ).encode(),
        )
    outcomes[planned.name] = outcome
    state.update(planned, outcome)


def _flt(value: float) -> float:
    return int(value) if float(value).is_integer() else value


def _completed_rounds(run_dir: Path) -> int:
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        return 0
    # metrics.jsonl holds a row per finished round; the checkpoint follows it.
    return max((r.round for r in read_metrics(run_dir) if r.metric == "round-seconds"), default=0)


def _error_from_output(lines: list[str], returncode: int | None) -> str:
    """The error lines of a `flwr run` that wrote no summary (it exits 0 even then)."""
    errors = [line.rstrip() for line in lines if "ERROR" in line or "Error:" in line]
    unique = list(dict.fromkeys(e for e in errors if e.strip()))
    if unique:
        return "\n".join(unique[:20])
    tail = "".join(lines[-15:]).strip()
    return f"no summary.json written (flwr run exit {returncode}); last output:\n{tail}"
