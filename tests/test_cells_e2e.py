"""End-to-end: several cells in one `flwr run` (run-config key ``cells-file``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedmatch.cells import CellSpec, read_status, write_cells
from fedmatch.localrun import PrivateFlower
from tests.flower_harness import read_jsonl

pytestmark = pytest.mark.e2e


def _comparable(run_dir: Path) -> list[tuple]:
    # Everything but wall-clock measurements.
    return [
        (r["round"], r["client"], r["domain"], r["metric"], r["value"])
        for r in read_jsonl(run_dir / "metrics.jsonl")
        if "seconds" not in r["metric"]
    ]


def test_cells_of_one_run_match_a_run_alone_and_a_failed_cell_is_skipped(
    flower: PrivateFlower, tmp_path: Path, data_cache: Path
):
    runs = tmp_path / "runs"
    base = {
        "strategy": "fedbn",  # keeps layers in node state: a leak between cells would show
        "domains": "mnist,optdigits,font-digits",
        "train-subset": 200,
        "model-width": 16,
        "num-server-rounds": 2,
        "fraction-train": 0.67,  # two of three clients per round: some read older state
        "seed": 3,
        "runs-dir": str(runs),
        "cache-dir": str(data_cache),
    }
    cells_file = tmp_path / "cells.json"
    write_cells(
        cells_file,
        [
            CellSpec("first", {**base, "run-name": "first"}),
            # Five domains cannot go to three SuperNodes: fails before any client trains.
            CellSpec("broken", {**base, "run-name": "broken", "domains": "all"}),
            CellSpec("other", {**base, "run-name": "other", "strategy": "fedavg", "seed": 4}),
            CellSpec("again", {**base, "run-name": "again"}),
        ],
    )
    result = flower.run({"cells-file": str(cells_file)}, timeout=900)
    output = result.stdout + result.stderr

    status = read_status(cells_file)
    assert {name: s.status for name, s in status.items()} == {
        "first": "done",
        "broken": "failed",
        "other": "done",
        "again": "done",
    }, output[-4000:]
    assert "num-partitions=3 < 5 domains" in status["broken"].error
    for name in ("first", "other", "again"):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["final_round"] == 2
        saved = json.loads((runs / name / "config.json").read_text())["run_config"]
        assert saved["run-name"] == name and saved["cells-file"] == ""
    # The fourth cell repeats the first after two others ran on the same nodes and
    # actors: the same numbers, so nothing of one cell reaches another.
    assert _comparable(runs / "again") == _comparable(runs / "first")
    assert _comparable(runs / "other") != _comparable(runs / "first")
