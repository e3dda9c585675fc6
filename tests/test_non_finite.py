"""A diverged run stops at the first non-finite round and is marked failed everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedmatch.report import ReportError, load_run
from fedmatch.results import SERVER, MetricRow
from strategies.rounds import NonFiniteError, check_finite


def _arrays(value: float) -> ArrayRecord:
    return ArrayRecord({"w": Array(np.array([1.0, value], dtype=np.float32))})


def test_check_finite_names_the_losses_and_the_weights():
    ok = [MetricRow(1, 0, "mnist", "train-loss", 0.5), MetricRow(1, SERVER, "all", "x", np.nan)]
    check_finite(1, _arrays(2.0), ok)  # a non-loss metric may be NaN (e.g. no samples)
    with pytest.raises(NonFiniteError, match=r"round 3: .*train-loss of client 1"):
        check_finite(3, _arrays(2.0), [MetricRow(3, 1, "mnist", "train-loss", np.inf)])
    with pytest.raises(NonFiniteError, match=r"global weights 'w'.*Lower the learning rate"):
        check_finite(2, _arrays(np.nan), ok)


@pytest.mark.hostile("report")
def test_a_failed_run_is_left_out_of_the_report_with_its_error(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"run_config": {"strategy": "fedavg"}}))
    (run / "metrics.jsonl").write_text("")
    (run / "summary.json").write_text(
        json.dumps({"status": "failed", "error": "round 2: non-finite values (train-loss)"})
    )
    with pytest.raises(ReportError, match=r"failed: round 2: non-finite"):
        load_run(run)


@pytest.mark.e2e
def test_a_diverging_run_stops_and_is_marked_failed(flower, tmp_path: Path, data_cache: Path):
    from tests.test_e2e_simulation import tiny

    runs = tmp_path / "runs"
    # SGD at lr 100 with momentum overflows within the first round.
    result = flower.run(
        tiny(runs, data_cache, **{"run-name": "diverged", "lr": 100.0, "momentum": 0.99})
    )
    summary_path = runs / "diverged" / "summary.json"
    assert summary_path.exists(), (result.stdout + result.stderr)[-3000:]
    summary = json.loads(summary_path.read_text())
    assert summary["status"] == "failed" and "non-finite" in summary["error"]
    assert not (runs / "diverged" / "model.pt").exists()  # no final model from NaN weights
