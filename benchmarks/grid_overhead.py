"""Fixed cost per cell of a `fedmatch bench` grid: cells in one `flwr run` or one each.

A tiny suite (3 clients, 2 rounds, 200 training images per client, ConvNet width 16,
FedAvg, one cell per seed) is run through ``fedmatch.bench.run_suite`` once per variant:

- ``batched``: every cell in one `flwr run` (``cells-per-run = 0``, the default; the
  ServerApp runs the cells one after another on the same SuperNodes and Ray actors,
  ``fedmatch/cells.py``), on the grid's Ray head;
- ``shared``: one `flwr run` per cell (``cells-per-run = 1``), every simulation attached
  to one Ray head for the grid (``ray start --head``, ``RAY_ADDRESS``);
- ``per-cell``: one `flwr run` per cell, each starting and stopping its own Ray, as a
  bare ``flwr run`` does.

Every variant uses one private SuperLink for the whole grid and the app snapshot (see
``fedmatch.bench.snapshot_app``).  The fixed cost is everything but training rounds:
the grid's wall time minus the Σ ``round-seconds`` the ServerApp recorded, per cell
(this includes starting the SuperLink and Ray head once).  The marginal cost is what one
more cell adds: for ``batched`` a cell's time inside the run minus its rounds, otherwise
a cell's `flwr run` wall time minus its rounds (median over the cells after the first).
For the one-run-per-cell variants the phases come from the time stamps of the streamed
log lines (``bench-state.json`` "timeline"; Flower's log stream polls every 0.5 s).

It also times building the app bundle from the repository (what `flwr run .` does on
every run) against building it from the snapshot, times each start-up component alone
in a fresh process (wall and CPU seconds; CPU seconds barely depend on other load), and
samples how much CPU other processes on the machine used (the machine is shared).

Usage::

    python benchmarks/grid_overhead.py [--cells 4] [--keep DIR] [--variants shared,per-cell]
                                       [--no-components]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

from overhead_load import TAG_VAR, ForeignCpu, Phase  # noqa: E402

from fedmatch.bench.launch import snapshot_app  # noqa: E402
from fedmatch.bench.runner import run_suite  # noqa: E402
from fedmatch.bench.state import STATE_FILE  # noqa: E402
from fedmatch.bench.suite import Suite  # noqa: E402
from fedmatch.localrun import REPO as APP_REPO  # noqa: E402

# variant -> (cells-per-run, shared Ray head)
VARIANTS = {"batched": (0, True), "shared": (1, True), "per-cell": (1, False)}
# Consecutive phases of a cell, as (label, start mark, end mark) over the log timeline.
PHASES = [
    ("CLI start + bundle + submit", None, "submitted"),
    ("simulation process start", "submitted", "simulation-started"),
    ("ServerApp start (imports, config, data)", "simulation-started", "serverapp-ready"),
    ("clients ready (Ray actors, imports, data)", "serverapp-ready", "clients-ready"),
    ("rounds (incl. round-0 server eval)", "clients-ready", "final-summary"),
    ("tear-down until `flwr run` exits", "final-summary", "exit"),
]


def suite(cells: int, cache_dir: Path, cells_per_run: int) -> Suite:
    return Suite.from_dict(
        {
            "name": "grid-overhead",
            "federation": {
                "num-supernodes": 3,
                "cpus-per-client": 1,
                "cells-per-run": cells_per_run,
            },
            "base": {
                "strategy": "fedavg",
                "domains": "mnist,optdigits,font-digits",
                "train-subset": 200,
                "model-width": 16,
                "num-server-rounds": 2,
                "cache-dir": str(cache_dir),
            },
            "axes": {"seed": list(range(cells))},
        },
        "grid-overhead",
    )


def bundle_seconds() -> tuple[float, float]:
    """Seconds to build the app bundle from the repository and from a snapshot of it."""
    from flwr.cli.build import build_fab_from_disk

    start = time.perf_counter()
    from_repo = build_fab_from_disk(APP_REPO)
    repo_seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        app = snapshot_app(APP_REPO, Path(tmp) / "app")
        start = time.perf_counter()
        from_snapshot = build_fab_from_disk(app)
        snapshot_seconds = time.perf_counter() - start
    assert from_repo == from_snapshot, "the snapshot bundles different files"
    return repo_seconds, snapshot_seconds


# Start-up pieces a cell pays, each timed alone in a fresh process: (label, python code or
# argv).  CPU seconds (user + sys of the process and its waited-for children) hardly depend
# on how busy the machine is; wall seconds do.
COMPONENTS: list[tuple[str, list[str]]] = [
    ("python interpreter", [sys.executable, "-c", "pass"]),
    ("`flwr` CLI start (`flwr --help`)", [str(Path(sys.executable).parent / "flwr"), "--help"]),
    (
        "simulation process imports (flwr, ray)",
        [sys.executable, "-c", "import flwr.simulation.app"],
    ),
    ("ServerApp imports (torch, fedmatch)", [sys.executable, "-c", "import strategies.server_app"]),
    ("ClientApp imports (torch, fedmatch)", [sys.executable, "-c", "import clients.client_app"]),
    (
        "start + stop a local Ray (what every cell does without the shared head)",
        [
            sys.executable,
            "-c",
            "import ray, shutil, tempfile; d = tempfile.mkdtemp(prefix='fmprobe-', dir='/tmp'); "
            "ray.init(include_dashboard=False, num_cpus=2, _temp_dir=d); ray.shutdown(); "
            "shutil.rmtree(d, ignore_errors=True)",
        ],
    ),
]


def time_components(repeats: int = 3) -> list[tuple[str, float, float]]:
    """Median (wall s, CPU s) of each start-up component."""
    import resource
    import subprocess

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = str(APP_REPO)
    rows = []
    for label, argv in COMPONENTS:
        walls, cpus = [], []
        for _ in range(repeats):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run(argv, env=env, cwd=APP_REPO, check=True, capture_output=True)
            walls.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpus.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
        rows.append((label, statistics.median(walls), statistics.median(cpus)))
        print(f"  {label}: wall {rows[-1][1]:.2f} s, CPU {rows[-1][2]:.2f} s", flush=True)
    return rows


def summarize(name: str, out: Path, phase: Phase, grid_wall: float) -> dict:
    state = json.loads((out / STATE_FILE).read_text())
    names = sorted(state["cells"], key=lambda k: int(k.split("-")[1]))
    cells = [state["cells"][k] for k in names]
    failed = [c for c in cells if c["status"] != "done"]
    if failed:
        raise RuntimeError(f"{name}: cells failed: {[c['error'] for c in failed]}")
    batches = sorted(state["batches"].values(), key=lambda b: b["finished_at"])
    rounds = [c["round_seconds"] for c in cells]
    if len(batches) == 1:  # all cells in one run: a cell's own time inside it
        marginal = [c["wall_seconds"] - c["round_seconds"] for c in cells]
        timelines = []
    else:  # one run per cell: the run's wall time
        by_cell = {b["cells"][0]: b for b in batches}
        marginal = [by_cell[n]["wall_seconds"] - state["cells"][n]["round_seconds"] for n in names]
        timelines = [{**by_cell[n]["timeline"], **state["cells"][n]["timeline"]} for n in names]
    phases = {}
    for label, begin, end in PHASES:
        values = [
            t[end] - (t[begin] if begin else 0.0)
            for t in timelines[1:]
            if end in t and (begin is None or begin in t)
        ]
        phases[label] = statistics.median(values) if values else float("nan")
    return {
        "variant": name,
        "cells": len(cells),
        "runs": len(batches),
        "grid_wall": grid_wall,
        "fixed_per_cell": (grid_wall - sum(rounds)) / len(cells),
        "first": marginal[0],
        "rest": marginal[1:],
        "rounds": rounds,
        "phases": phases,
        "ray_jobs": state["last-invocation"].get("ray_jobs_on_shared_head"),
        "machine": phase.describe(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=4)
    parser.add_argument("--variants", default="batched,shared,per-cell")
    parser.add_argument("--keep", type=Path, default=None, help="keep the grids' folders here")
    parser.add_argument("--no-components", action="store_true", help="skip timing components")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("~/.cache/fedmatch").expanduser().resolve()
    )
    args = parser.parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: a comma list of {', '.join(VARIANTS)} (or empty)")

    tag = uuid.uuid4().hex
    os.environ[TAG_VAR] = tag  # inherited by flwr run, the SuperLink, Ray: "our" processes
    sampler = ForeignCpu(tag).start()
    results = []
    components: list[tuple[str, float, float]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="fedmatch-grid-overhead-") as tmp:
            work = args.keep.resolve() if args.keep else Path(tmp)
            with Phase(sampler, "bundle") as phase:
                repo_s, snapshot_s = bundle_seconds()
            print(
                f"app bundle: {repo_s:.2f} s from the repository, {snapshot_s:.3f} s from the "
                f"snapshot; {phase.describe()}",
                flush=True,
            )
            if not args.no_components:
                print("start-up components, each alone (median of 3):", flush=True)
                with Phase(sampler, "components") as phase:
                    components = time_components()
                print(f"  {phase.describe()}", flush=True)
            for name in variants:
                out = work / name
                print(f"{name}: {args.cells} cells ...", flush=True)
                cells_per_run, shared_ray = VARIANTS[name]
                with Phase(sampler, name) as phase:
                    result = run_suite(
                        suite(args.cells, args.cache_dir, cells_per_run),
                        out,
                        shared_ray=shared_ray,
                        report=False,
                        progress=False,
                    )
                results.append(summarize(name, out, phase, result.wall_seconds))
                print(f"  {results[-1]['machine']}; load {os.getloadavg()}", flush=True)
    finally:
        sampler.stop()

    print()
    print(
        f"{'variant':<9} {'cells':>5} {'flwr runs':>9} {'grid wall s':>11} "
        f"{'fixed s/cell':>12} {'1st cell s':>10} {'marginal s, other cells':>30} "
        f"{'median':>7} {'Ray jobs':>8}"
    )
    for r in results:
        rest = ", ".join(f"{v:.1f}" for v in r["rest"])
        print(
            f"{r['variant']:<9} {r['cells']:>5} {r['runs']:>9} {r['grid_wall']:>11.1f} "
            f"{r['fixed_per_cell']:>12.1f} {r['first']:>10.1f} {rest:>30} "
            f"{statistics.median(r['rest']):>7.1f} {r['ray_jobs']!s:>8}"
        )
    print()
    print("median seconds per phase (cells after the first; one-run-per-cell variants):")
    print(f"{'phase':<45}" + "".join(f"{r['variant']:>10}" for r in results))
    for label, _, _ in PHASES:
        print(f"{label:<45}" + "".join(f"{r['phases'][label]:>10.1f}" for r in results))
    if components:
        print()
        print(f"{'start-up component (alone)':<72} {'wall s':>7} {'CPU s':>7}")
        for label, wall, cpu in components:
            print(f"{label:<72} {wall:>7.2f} {cpu:>7.2f}")
    for r in results:
        print(
            f"{r['variant']}: Σ round-seconds per cell {[round(s, 1) for s in r['rounds']]}; "
            f"{r['machine']}"
        )


if __name__ == "__main__":
    main()
