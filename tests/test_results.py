from __future__ import annotations

import json

import numpy as np
import pytest

from fedmatch.config import ConfigError, RunConfig
from fedmatch.results import SERVER, MetricRow, RunRecorder, format_domain_table, read_metrics


def cfg(tmp_path, **kw) -> RunConfig:
    return RunConfig(runs_dir=str(tmp_path), run_name="r1", **kw)


def test_open_writes_config_and_refuses_to_overwrite(tmp_path):
    rec = RunRecorder.open(cfg(tmp_path))
    saved = json.loads((rec.run_dir / "config.json").read_text())
    assert saved["run_config"]["run-name"] == "r1"
    assert saved["versions"]["flwr"].startswith("1.4")
    rec.close()
    with pytest.raises(ConfigError, match="already holds a run"):
        RunRecorder.open(cfg(tmp_path))


@pytest.mark.hostile("run-files")
def test_resume_requires_an_existing_run_and_the_same_experiment(tmp_path):
    with pytest.raises(ConfigError, match="no run to resume"):
        RunRecorder.open(cfg(tmp_path, resume=True))
    RunRecorder.open(cfg(tmp_path)).close()
    with pytest.raises(ConfigError, match=r"lr: 0\.01 -> 0\.1"):
        RunRecorder.open(cfg(tmp_path, resume=True, lr=0.1))
    # More rounds is allowed: that is what resuming is for.
    RunRecorder.open(cfg(tmp_path, resume=True, num_server_rounds=9)).close()


def test_metrics_checkpoint_truncate_and_summary(tmp_path):
    rec = RunRecorder.open(cfg(tmp_path))
    for r in (1, 2):
        rec.append(
            [
                MetricRow(r, 0, "mnist", "test-accuracy", 0.5 + r / 10),
                MetricRow(r, 1, "optdigits", "test-accuracy", 0.3 + r / 10),
                MetricRow(r, SERVER, "mnist", "test-accuracy", 0.4 + r / 10),
                MetricRow(r, 0, "mnist", "bytes-up", 100.0),
                MetricRow(r, SERVER, "all", "round-seconds", 2.0 * r),
            ]
        )
        rec.save_checkpoint(r, {"w": np.full(3, r, dtype=np.float32)}, {"step": r})
    checkpoint = rec.load_checkpoint()
    assert checkpoint["round"] == 2 and checkpoint["strategy_state"] == {"step": 2}
    np.testing.assert_array_equal(checkpoint["arrays"]["w"], np.full(3, 2, dtype=np.float32))

    summary = rec.write_summary()
    assert summary["final_round"] == 2
    assert summary["client_accuracy_per_domain"] == pytest.approx({"mnist": 0.7, "optdigits": 0.5})
    assert summary["server_accuracy_per_domain"] == pytest.approx({"mnist": 0.6})
    assert summary["mean_accuracy"] == pytest.approx(0.6)
    assert summary["worst_domain_accuracy"] == pytest.approx(0.5)
    assert summary["bytes_up_total"] == 200.0 and summary["seconds_per_round"] == 3.0
    assert "optdigits" in format_domain_table(summary)

    rec.truncate_after(1)
    assert {row.round for row in read_metrics(rec.run_dir)} == {1}
    assert RunRecorder(rec.run_dir, rec.cfg).rows == read_metrics(rec.run_dir)


@pytest.mark.hostile("run-files")
def test_resume_with_fewer_rounds_than_completed_is_refused_and_changes_nothing(tmp_path):
    rec = RunRecorder.open(cfg(tmp_path, num_server_rounds=5))
    for r in (1, 2, 3):
        rec.append([MetricRow(r, 0, "mnist", "test-accuracy", 0.5)])
        rec.save_checkpoint(r, {"w": np.zeros(2, dtype=np.float32)}, {})
    rec.close()
    config_before = (rec.run_dir / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"'num-server-rounds' = 2: .* completed 3 rounds"):
        RunRecorder.open(cfg(tmp_path, resume=True, num_server_rounds=2))
    assert (rec.run_dir / "config.json").read_bytes() == config_before
    # Exactly as many, or more, continue the run.
    RunRecorder.open(cfg(tmp_path, resume=True, num_server_rounds=3)).close()
    RunRecorder.open(cfg(tmp_path, resume=True, num_server_rounds=8)).close()
