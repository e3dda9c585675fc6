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
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedmatch.cells import END_MARK, START_MARK, CellSpec, read_status, write_cells
from fedmatch.config import ConfigError, RunConfig
from fedmatch.localrun import (
    REPO,
    PrivateFlower,
    cmdline,
    free_port,
    is_alive,
    process_tree,
    stop_tree,
)
from fedmatch.results import atomic_write_bytes, changed_config_keys, read_metrics

log = logging.getLogger("fedmatch.bench")

# The runner sets these per cell; a suite may not.
RESERVED_KEYS = frozenset({"runs-dir", "run-name", "resume", "cells-file"})
STATE_FILE = "bench-state.json"
CELL_FILE = "bench-cell.json"  # written into each finished run directory
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_UNSAFE = re.compile(r"[^A-Za-z0-9.-]+")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
Scalar = str | int | float | bool

# Lines of a cell's `flwr run` output that mark its start-up phases (first match wins).
TIMELINE_MARKS = {
    "submitted": "Successfully started run",
    "simulation-started": "Starting Flower Simulation",
    "serverapp-ready": "INFO fedmatch: run directory:",
    "clients-ready": " clients (",  # "<strategy> on N clients (...), rounds a..b"
    "first-round-done": "INFO fedmatch: round ",
    "final-summary": "INFO fedmatch: final per-domain",
}


class SuiteError(ValueError):
    """A suite file cannot be run; the message names the key, the value and what is allowed."""


class BenchError(RuntimeError):
    """An output folder cannot take this grid (it holds results of another config)."""


def _to_key(name: str) -> str:
    return name.replace("_", "-")


class _Table(BaseModel):
    model_config = ConfigDict(
        extra="forbid", frozen=True, alias_generator=_to_key, populate_by_name=True
    )


class Federation(_Table):
    """``[federation]``: the simulated federation every cell runs on."""

    num_supernodes: int = Field(ge=1)
    cpus_per_client: float = Field(1, gt=0)
    gpus_per_client: float = Field(0, ge=0)
    # One Ray head for the whole grid (see the module docstring); false: Ray per cell.
    shared_ray: bool = True
    ray_num_cpus: int = Field(0, ge=0)  # 0: every core of this machine
    ray_num_gpus: int = Field(-1, ge=-1)  # -1: whatever Ray detects
    cell_timeout: float = Field(6 * 3600, gt=0)  # seconds; a cell past it is failed
    # Cells per `flwr run` (fedmatch/cells.py): 0 runs all pending cells in one, paying
    # the simulation's start-up once; 1 gives every cell its own `flwr run`.
    cells_per_run: int = Field(0, ge=0)


class ReportOptions(_Table):
    """``[report]``: options of the report built at the end of the grid."""

    # Rounds-to-target column; unset: 0.9 x the best final mean accuracy of the group.
    target_accuracy: float | None = Field(None, gt=0, le=1)


class Suite(_Table):
    """A benchmark suite file."""

    name: str
    description: str = ""
    federation: Federation
    report: ReportOptions = ReportOptions()
    base: dict[str, Scalar] = {}
    axes: dict[str, list[Scalar]] = {}

    @field_validator("name")
    @classmethod
    def _name_chars(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "must start with a letter or digit and use only letters, digits, '._-'"
            )
        return value

    @field_validator("base")
    @classmethod
    def _base_keys(cls, value: dict[str, Scalar]) -> dict[str, Scalar]:
        _check_run_config_keys(value, "base")
        return value

    @field_validator("axes")
    @classmethod
    def _axes_values(cls, value: dict[str, list[Scalar]]) -> dict[str, list[Scalar]]:
        _check_run_config_keys(value, "axes")
        for key, values in value.items():
            if not values:
                raise ValueError(f"axis {key!r} = []: give at least one value")
            seen = [json.dumps(v) for v in values]
            if len(set(seen)) != len(seen):
                raise ValueError(f"axis {key!r} = {values!r}: lists a value more than once")
        return value

    # ------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: Path) -> Suite:
        """Read and validate a suite file, including every cell's run config."""
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SuiteError(f"suite file {path} does not exist") from None
        except tomllib.TOMLDecodeError as err:
            raise SuiteError(f"suite file {path} is not valid TOML: {err}") from None
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<suite>") -> Suite:
        try:
            suite = cls.model_validate(dict(data))
        except ValidationError as err:
            raise SuiteError(_format_suite_errors(err, data, source)) from None
        overlap = sorted(set(suite.base) & set(suite.axes))
        if overlap:
            raise SuiteError(
                f"suite {source}: key(s) {', '.join(map(repr, overlap))} are set in both "
                "[base] and [axes]; keep each key in one of them"
            )
        suite.cells(source)  # validates every cell's run config
        return suite

    # ------------------------------------------------------------ cells

    def cells(self, source: str = "<suite>") -> list[Cell]:
        """Every cell of the grid, in axis order (the first axis varies slowest)."""
        keys = list(self.axes)
        cells, problems = [], {}
        for values in itertools.product(*(self.axes[k] for k in keys)):
            axes = dict(zip(keys, values, strict=True))
            name = cell_name(axes) if axes else self.name
            overrides = {**self.base, **axes}
            try:
                cfg = RunConfig.from_flower({**overrides, "run-name": name})
                self._check_federation(cfg)
            except ConfigError as err:
                where = ", ".join(f"{k}={v!r}" for k, v in axes.items()) or "no axes"
                # The same [base] mistake would repeat for every cell: report it once.
                problems.setdefault(str(err), f"cell {name} ({where})")
                continue
            cells.append(Cell(name=name, axes=axes, overrides=overrides, cfg=cfg))
        if problems:
            details = "\n".join(f"{cell}: {msg}" for msg, cell in list(problems.items())[:10])
            raise SuiteError(f"suite {source}: invalid run config in [base]/[axes]:\n{details}")
        names = [c.name for c in cells]
        if len(set(names)) != len(names):  # only if two values sanitise and hash alike
            raise SuiteError(f"suite {source}: two cells share a name: {names}")
        return cells

    def _check_federation(self, cfg: RunConfig) -> None:
        from fedmatch.data.loaders import available_domains

        cfg.domain_names(available_domains(cfg.dataset))
        if cfg.min_available_nodes > self.federation.num_supernodes:
            raise ConfigError(
                f"run-config key 'min-available-nodes' = {cfg.min_available_nodes} exceeds "
                f"[federation] num-supernodes = {self.federation.num_supernodes}: the server "
                "would wait for SuperNodes that never come"
            )

    def federation_config(self) -> str:
        """The ``--federation-config`` value of every cell."""
        fed = self.federation
        return (
            f"num-supernodes={fed.num_supernodes} "
            f"client-resources-num-cpus={_number(fed.cpus_per_client)} "
            f"client-resources-num-gpus={_number(fed.gpus_per_client)}"
        )


def _check_run_config_keys(table: Mapping[str, Any], where: str) -> None:
    allowed = sorted(_to_key(name) for name in RunConfig.model_fields)
    for key in table:
        if key in RESERVED_KEYS:
            raise ValueError(
                f"key {key!r} is set by `fedmatch bench` for every cell (runs go to "
                "<out>/runs/<cell-name>, interrupted cells resume); remove it"
            )
        if key not in allowed:
            raise ValueError(
                f"unknown run-config key {key!r} in [{where}]; allowed keys: "
                + ", ".join(k for k in allowed if k not in RESERVED_KEYS)
            )


def _format_suite_errors(err: ValidationError, data: Mapping[str, Any], source: str) -> str:
    lines = [f"invalid suite file {source}:"]
    for item in err.errors():
        location = [str(part) for part in item.get("loc", ())]
        key = ".".join(location)
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            table = _table_model(location[:-1])
            allowed = ", ".join(_to_key(name) for name in table.model_fields) if table else ""
            lines.append(f"  - unknown key {key!r}; allowed here: {allowed}")
        elif item["type"] == "missing":
            lines.append(f"  - key {key!r} is missing (required)")
        elif location in (["base"], ["axes"]):
            lines.append(f"  - [{location[0]}]: {message}")  # the message names the key
        else:
            value = _lookup(data, location)
            shown = f" = {value!r}" if value is not _MISSING else ""
            lines.append(f"  - key {key!r}{shown}: {message}")
    return "\n".join(lines)


_MISSING = object()


def _lookup(data: Any, location: list[str]) -> Any:
    for part in location:
        if isinstance(data, Mapping) and part in data:
            data = data[part]
        elif isinstance(data, list) and part.isdigit() and int(part) < len(data):
            data = data[int(part)]
        else:
            return _MISSING
    return data


def _table_model(location: list[str]) -> type[BaseModel] | None:
    tables: dict[tuple[str, ...], type[BaseModel]] = {
        (): Suite,
        ("federation",): Federation,
        ("report",): ReportOptions,
    }
    return tables.get(tuple(location))


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


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
        if summary_path.exists():
            final = json.loads(summary_path.read_text()).get("final_round", 0)
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


# ------------------------------------------------------------------------- shared Ray


def _short_tmp(prefix: str) -> Path:
    # Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
    base = "/tmp" if Path("/tmp").is_dir() else tempfile.gettempdir()
    return Path(tempfile.mkdtemp(prefix=prefix, dir=base))


@dataclass
class RayHead:
    """A private single-node Ray cluster (``ray start --head --block``) for one grid.

    Its own temp dir keeps it away from other users' Ray instances: ``ray.init()``
    without an address reads ``<temp-dir>/ray_current_cluster``, and this one is not
    under the default ``/tmp/ray``.  ``--block`` keeps the ``ray start`` process as the
    parent of every Ray process, so ``stop`` ends exactly this cluster (``ray stop``
    would end every Ray instance on the machine).
    """

    process: subprocess.Popen[bytes]
    temp_dir: Path
    address: str
    log_path: Path

    @classmethod
    def start(
        cls,
        log_path: Path,
        *,
        num_cpus: int = 0,
        num_gpus: int = -1,
        env: Mapping[str, str] | None = None,
        timeout: float = 180,
    ) -> RayHead:
        temp_dir = _short_tmp("fmray-")
        command = [
            str(Path(sys.executable).parent / "ray"),
            "start",
            "--head",
            "--block",
            f"--temp-dir={temp_dir}",
            "--port=0",
            f"--num-cpus={num_cpus or os.cpu_count() or 1}",
            "--include-dashboard=false",
            # Fixed defaults (52365, 10001) would collide with another Ray on this machine.
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            "--disable-usage-stats",
        ]
        if num_gpus >= 0:
            command.append(f"--num-gpus={num_gpus}")
        run_env = dict(env if env is not None else os.environ)
        run_env.pop("RAY_ADDRESS", None)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            process = subprocess.Popen(
                command, env=run_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        address_file = temp_dir / "ray_current_cluster"
        deadline = time.monotonic() + timeout
        while not address_file.exists() or not address_file.read_text().strip():
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise RuntimeError(
                    f"`ray start --head` did not come up (exit {process.poll()}); its log "
                    f"{log_path}:\n{log_path.read_text(errors='replace')[-3000:]}"
                )
            time.sleep(0.1)
        head = cls(process, temp_dir, address_file.read_text().strip(), log_path)
        log.info("Ray head at %s (temp dir %s)", head.address, temp_dir)
        return head

    def attached_jobs(self) -> int:
        """How many drivers (one per cell's simulation) have attached to this cluster."""
        return len(list(self.temp_dir.glob("session_latest/logs/python-core-driver-*.log")))

    def stop(self) -> None:
        stop_tree(self.process.pid)
        self.process.wait()
        # Anything that outlived its parent still names our temp dir on its command line.
        marker = str(self.temp_dir)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and marker in cmdline(int(entry.name)):
                pid = int(entry.name)
                if is_alive(pid):
                    for child in process_tree(pid):
                        stop_tree(child, timeout=2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------- app snapshot

# Files Flower may put in an app bundle; the app's `fab-include` narrows them further.
_BUNDLE_SUFFIXES = frozenset({".py", ".toml", ".md", ".yaml", ".yml", ".json", ".jsonl"})
_BUNDLE_NAMES = frozenset({"LICENSE", ".gitignore"})
_NOT_APP_DIRS = frozenset({"runs", "build", "dist", "__pycache__", "node_modules"})


def snapshot_app(source: Path, dest: Path) -> Path:
    """Copy what `flwr run` may bundle from the app directory ``source`` into ``dest``.

    Two reasons to run a grid from a copy: `flwr run` walks and resolves every file
    under the app directory before filtering (the repository's .venv alone is ~47,000
    files, seconds per cell on 2 cores), and every cell of one grid then runs the same
    code even if the working tree changes while the grid runs.
    """
    for dirpath, dirnames, filenames in os.walk(source):
        here = Path(dirpath)
        dirnames[:] = [
            d
            for d in dirnames
            if not d.startswith(".")
            and d not in _NOT_APP_DIRS
            and not d.endswith(".egg-info")
            and not (here / d / "pyvenv.cfg").exists()
        ]
        for filename in filenames:
            path = here / filename
            if path.is_symlink():
                continue
            if path.suffix in _BUNDLE_SUFFIXES or filename in _BUNDLE_NAMES:
                target = dest / path.relative_to(source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
    return dest


# ------------------------------------------------------------------------- running


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


def default_out_dir(suite: Suite) -> Path:
    return Path.cwd() / "runs" / "bench" / suite.name


def run_suite(
    suite: Suite,
    out_dir: Path,
    *,
    suite_text: str | None = None,
    shared_ray: bool | None = None,
    report: bool = True,
    progress: bool | None = None,
) -> BenchResult:
    """Run every cell of ``suite`` that is not finished yet, then build the report.

    ``shared_ray`` overrides the suite's ``[federation] shared-ray``; ``progress``
    shows a progress bar (default: when stderr is a terminal).
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser().resolve()
    runs_dir, logs_dir = out_dir / "runs", out_dir / "logs"
    cells = suite.cells()
    planned = plan(cells, runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    logs_dir.mkdir(parents=True, exist_ok=True)
    if suite_text is not None:
        (out_dir / "suite.toml").write_text(suite_text)
    state = _State.open(out_dir / STATE_FILE, suite)
    use_shared_ray = suite.federation.shared_ray if shared_ray is None else shared_ray

    outcomes: dict[str, CellOutcome] = {}
    pending = [p for p in planned if p.action != "skip"]
    for item in planned:
        if item.action == "skip":
            outcomes[item.cell.name] = CellOutcome(item.cell.name, "skipped")
            state.update(item.cell, outcomes[item.cell.name], skipped=True)
    log.info(
        "suite %s: %d cells, %d finished (skipped), %d to run; output %s",
        suite.name,
        len(planned),
        len(planned) - len(pending),
        len(pending),
        out_dir,
    )

    ray_jobs = None
    if pending:
        with _Progress(len(planned), len(planned) - len(pending), progress) as bar:
            ray_jobs = _run_pending(suite, pending, out_dir, state, outcomes, bar, use_shared_ray)

    report_dir = None
    finished = [runs_dir / c.name for c in cells if outcomes[c.name].status in ("done", "skipped")]
    if report and finished:
        from fedmatch.report import build_report

        report_dir = out_dir / "report"
        build_report(
            finished,
            report_dir,
            target_accuracy=suite.report.target_accuracy,
            title=f"Benchmark suite {suite.name}",
            description=suite.description,
        )
        log.info("report: %s", report_dir / "report.md")
    result = BenchResult(
        out_dir,
        [outcomes[c.name] for c in cells],
        report_dir,
        time.perf_counter() - started,
        ray_jobs,
    )
    state.finish(result.wall_seconds, use_shared_ray, ray_jobs)
    return result


def _run_pending(
    suite: Suite,
    pending: list[PlannedCell],
    out_dir: Path,
    state: _State,
    outcomes: dict[str, CellOutcome],
    bar: _Progress,
    shared_ray: bool,
) -> int | None:
    """Run the pending cells; returns how many simulations attached to the shared Ray.

    Cells go in batches of ``[federation] cells-per-run`` (0: all) per `flwr run`
    (``fedmatch/cells.py``).  Cells a batch never reached, because its `flwr run`
    ended early, go into the next batch; every batch settles at least its first cell,
    so the loop ends.
    """
    logs_dir = out_dir / "logs"
    home = _short_tmp("fedmatch-bench-flwr-")
    ray: RayHead | None = None
    flower: PrivateFlower | None = None
    ray_jobs = None
    tracker = _Tracker(len(pending), bar)
    try:
        app = snapshot_app(REPO, home / "app")
        if shared_ray:
            ray = RayHead.start(
                logs_dir / "ray-head.log",
                num_cpus=suite.federation.ray_num_cpus,
                num_gpus=suite.federation.ray_num_gpus,
            )
        # The SuperExec looks for new runs once a second by default; a grid submits a
        # run right after the previous one ends, so look more often.
        flower = PrivateFlower.create(
            home,
            {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"},
            ray_address=ray.address if ray else None,
            app=app,
        )
        queue = list(pending)
        while queue:
            size = suite.federation.cells_per_run or len(queue)
            batch, queue = queue[:size], queue[size:]
            queue = _run_batch(flower, suite, batch, out_dir, state, outcomes, tracker) + queue
    finally:
        if flower is not None:
            flower.stop()
        if ray is not None:
            ray_jobs = ray.attached_jobs()
            ray.stop()
        shutil.rmtree(home, ignore_errors=True)
    return ray_jobs


class _Tracker:
    """Progress over cells: the bar, the ETA, and a log line per settled cell."""

    def __init__(self, total: int, bar: _Progress) -> None:
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
                _duration(eta),
            )
        else:
            log.error(
                "cell %s FAILED after %.0f s: %s (log: %s); ETA %s",
                outcome.name,
                outcome.wall_seconds,
                outcome.error.splitlines()[0] if outcome.error else "?",
                log_path,
                _duration(eta),
            )


@dataclass
class _Running:
    """What the stream has shown of one cell of a batch."""

    planned: PlannedCell
    rounds_before: int
    started: float | None = None  # seconds since the batch's launch
    ended: float | None = None
    lines: list[str] = field(default_factory=list)
    timeline: dict[str, float] = field(default_factory=dict)


def _run_batch(
    flower: PrivateFlower,
    suite: Suite,
    batch: list[PlannedCell],
    out_dir: Path,
    state: _State,
    outcomes: dict[str, CellOutcome],
    tracker: _Tracker,
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
    state: _State,
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
    finished = summary_path.exists() and (
        json.loads(summary_path.read_text()).get("final_round", 0) >= planned.cfg.num_server_rounds
    )
    if status is not None and status.status == "failed":
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


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


# ------------------------------------------------------------------------- state file


class _State:
    """``bench-state.json``: each cell's last outcome; rewritten atomically after each."""

    def __init__(self, path: Path, data: dict[str, Any]) -> None:
        self.path, self.data = path, data

    @classmethod
    def open(cls, path: Path, suite: Suite) -> _State:
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


# ------------------------------------------------------------------------- progress


class _Progress:
    """A rich progress bar over cells (ETA from the cells run so far), or nothing."""

    def __init__(self, total: int, done: int, enabled: bool | None) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled
        self.total, self.done = total, done
        self._progress: Any = None
        self._task: Any = None
        self._moved: list[logging.StreamHandler] = []

    def __enter__(self) -> _Progress:
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
            self._progress.update(self._task, advance=1, eta=_duration(eta_seconds))


def iter_outcome_lines(result: BenchResult) -> Iterator[str]:
    """Human-readable lines about a finished grid (for the CLI)."""
    counts: dict[str, int] = {}
    for outcome in result.outcomes:
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
    yield (
        f"suite finished in {_duration(result.wall_seconds)}: "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    )
    for outcome in result.failed:
        first = outcome.error.splitlines()[0] if outcome.error else "?"
        yield f"  FAILED {outcome.name}: {first}"
    if result.report_dir is not None:
        yield f"report: {result.report_dir / 'report.md'}"
    yield f"state: {result.out_dir / STATE_FILE}"
