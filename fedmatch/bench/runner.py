"""A grid end to end: plan, start the app snapshot, Ray head and SuperLink, run, report."""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from pathlib import Path

from fedmatch.bench.batch import run_batch
from fedmatch.bench.launch import RayHead, short_tmp, snapshot_app
from fedmatch.bench.planning import PlannedCell, plan
from fedmatch.bench.progress import ProgressBar, Tracker
from fedmatch.bench.state import STATE_FILE, BenchResult, BenchState, CellOutcome
from fedmatch.bench.suite import Suite
from fedmatch.localrun import REPO, PrivateFlower
from fedmatch.run_status import mark_stopped
from fedmatch.runlock import RunLockedError

log = logging.getLogger("fedmatch.bench")


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
    state = BenchState.open(out_dir / STATE_FILE, suite)
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
        with ProgressBar(len(planned), len(planned) - len(pending), progress) as bar:
            ray_jobs = _run_pending(suite, pending, out_dir, state, outcomes, bar, use_shared_ray)

    report_dir = None
    finished = [runs_dir / c.name for c in cells if outcomes[c.name].status in ("done", "skipped")]
    if report and finished:
        from fedmatch.report.build import build_report

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
    state: BenchState,
    outcomes: dict[str, CellOutcome],
    bar: ProgressBar,
    shared_ray: bool,
) -> int | None:
    """Run the pending cells; returns how many simulations attached to the shared Ray.

    Cells go in batches of ``[federation] cells-per-run`` (0: all) per `flwr run`
    (``fedmatch/cells.py``).  Cells a batch never reached, because its `flwr run`
    ended early, go into the next batch; every batch settles at least its first cell,
    so the loop ends.
    """
    logs_dir = out_dir / "logs"
    home = short_tmp("fedmatch-bench-flwr-")
    ray: RayHead | None = None
    flower: PrivateFlower | None = None
    ray_jobs = None
    tracker = Tracker(len(pending), bar)
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
            queue = run_batch(flower, suite, batch, out_dir, state, outcomes, tracker) + queue
    finally:
        if flower is not None:
            flower.stop()
        if ray is not None:
            ray_jobs = ray.attached_jobs()
            ray.stop()
        shutil.rmtree(home, ignore_errors=True)
        _mark_interrupted_cells(out_dir / "runs", outcomes)
    return ray_jobs


def _mark_interrupted_cells(runs_dir: Path, outcomes: dict[str, CellOutcome]) -> None:
    """Cells stopped mid-run (Ctrl-C) say so in their run directory, as `fedmatch run`'s do;
    their processes are gone by now, so the locks are free."""
    for name, outcome in outcomes.items():
        run_dir = runs_dir / name
        if outcome.status == "interrupted" and (run_dir / "config.json").exists():
            with contextlib.suppress(RunLockedError):
                mark_stopped(run_dir, "stopped by its user (fedmatch bench, Ctrl-C)")
