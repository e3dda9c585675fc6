"""End-to-end: `fedmatch bench` grids through the real `flwr run` (tiny cells)."""

from __future__ import annotations

import json
import time
import tomllib
from pathlib import Path

import pytest

from fedmatch.bench import STATE_FILE, Suite, run_suite
from fedmatch.cli import main as cli_main
from fedmatch.localrun import REPO

pytestmark = pytest.mark.e2e

TINY_BASE = {
    "domains": "mnist,optdigits,font-digits",
    "train-subset": 200,
    "model-width": 16,
    "num-server-rounds": 2,
}


def cut_down_quick_suite(cache_dir: Path) -> Suite:
    """digits-quick.toml with tiny cells: 3 clients, 2 rounds, 2 cells."""
    data = tomllib.loads((REPO / "benchmarks/suites/digits-quick.toml").read_text())
    data["base"].update(TINY_BASE, **{"cache-dir": str(cache_dir)})
    data["federation"]["num-supernodes"] = 3
    data["axes"] = {"strategy": ["fedavg", "fedbn"], "seed": [0]}
    return Suite.from_dict(data, "digits-quick (cut down)")


def test_grid_runs_then_a_rerun_skips_every_cell(tmp_path: Path, data_cache: Path):
    suite = cut_down_quick_suite(data_cache)
    out = tmp_path / "bench"
    result = run_suite(suite, out, progress=False)

    assert [o.status for o in result.outcomes] == ["done", "done"], [
        o.error for o in result.outcomes
    ]
    # Both cells ran in one `flwr run` (cells-per-run = 0), one simulation on the Ray head.
    assert result.ray_jobs == 1
    state = json.loads((out / STATE_FILE).read_text())
    assert [b["cells"] for b in state["batches"].values()] == [[c.name for c in suite.cells()]]
    for cell in suite.cells():
        run_dir = out / "runs" / cell.name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["final_round"] == 2 and summary["mean_accuracy"] > 0.15
        saved = json.loads((run_dir / "config.json").read_text())["run_config"]
        assert saved["strategy"] == cell.cfg.strategy and saved["model-width"] == 16
        entry = state["cells"][cell.name]
        assert entry["status"] == "done" and entry["rounds_run"] == 2
        assert 0 < entry["round_seconds"] < entry["wall_seconds"]
        assert entry["timeline"]["cell-start"] <= entry["timeline"]["clients-ready"]
        cell_file = json.loads((run_dir / "bench-cell.json").read_text())
        assert "num-supernodes=3" in cell_file["federation-config"]
        assert f"run-name='{cell.name}'" in " ".join(cell_file["command"])  # runs it alone
        log_text = (out / "logs" / f"{cell.name}.log").read_text()
        assert f"run directory: {run_dir}" in log_text  # the cell's own share of the output
    first = state["cells"][suite.cells()[0].name]["timeline"]
    assert first["submitted"] < first["cell-start"]  # the launch is shown on the first cell
    report = (out / "report" / "report.md").read_text()
    assert "| fedavg | 1 (0) |" in report and "| fedbn | 1 (0) |" in report
    assert "num-supernodes=3 client-resources-num-cpus=1" in report
    logs = {p.name: p.stat().st_size for p in (out / "logs").glob("*.log")}

    start = time.perf_counter()
    again = run_suite(suite, out, progress=False)
    elapsed = time.perf_counter() - start
    assert [o.status for o in again.outcomes] == ["skipped", "skipped"]
    assert again.ray_jobs is None  # nothing started: no Ray, no SuperLink
    assert {p.name: p.stat().st_size for p in (out / "logs").glob("*.log")} == logs
    assert elapsed < 30, f"re-run took {elapsed:.1f} s"
    state = json.loads((out / STATE_FILE).read_text())
    assert all(e["status"] == "done" for e in state["cells"].values())
    assert (out / "report" / "report.html").exists()


def test_failed_cells_are_recorded_and_the_grid_goes_on(tmp_path: Path, data_cache: Path):
    # Five domains cannot be split over three SuperNodes with `domain` partitioning: the
    # ServerApp refuses it before any client trains.
    suite_file = tmp_path / "fails.toml"
    suite_file.write_text(
        f"""
name = "fails"
[federation]
num-supernodes = 3
[base]
domains = "all"
num-server-rounds = 1
cache-dir = "{data_cache}"
[axes]
seed = [0, 1]
"""
    )
    out = tmp_path / "out"
    assert cli_main(["bench", str(suite_file), "--out", str(out)]) == 1
    state = json.loads((out / STATE_FILE).read_text())
    assert set(state["cells"]) == {"seed-0", "seed-1"}  # the second ran after the first failed
    for entry in state["cells"].values():
        assert entry["status"] == "failed"
        assert "num-partitions=3 < 5 domains" in entry["error"]
    assert not (out / "report").exists()  # nothing finished, nothing to report
    assert (out / "suite.toml").read_text() == suite_file.read_text()
