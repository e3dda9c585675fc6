"""benchmarks/quant_bench_report.py: the PTQ ablation's summary over seeds, hand-computed."""

from __future__ import annotations

import importlib.util
import json

import pytest

from fedmatch.localrun import REPO


@pytest.fixture
def report():
    spec = importlib.util.spec_from_file_location(
        "quant_bench_report", REPO / "benchmarks" / "quant_bench_report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(method, clipping, seed, fid, acc=None):
    row = {"bits": "W4A8", "method": method, "weight_clipping": clipping, "seed": seed,
           "calibration": "federated", "fid": fid, "bytes": 1000, "ms_per_image": 3.0}  # fmt: skip
    if acc is not None:
        row["class_accuracy"] = {"a": {"samples": acc, "real": 1.0}, "b": {"samples": 0.5}}
    return row


RESULTS = {
    "fp32": {"fid": 100.0, "bytes": 4000, "ms_per_image": 2.0},
    "runs": [
        _run("naive", "method", 0, 140.0, acc=0.7),
        _run("naive", "method", 1, 120.0, acc=0.9),
        _run("naive", "mse", 0, 120.0),  # the clipping search alone halves seed 0's gap
        _run("naive", "mse", 1, 115.0),
        _run("edadm", "method", 0, 110.0),
        _run("edadm", "method", 1, 105.0),
    ],
}


def test_summary_shares_are_per_seed_ratios_to_naive_min_max(report):
    rows = {(r["method"], r["weight_clipping"]): r for r in report.summary_rows(RESULTS)}
    naive = rows[("naive", "method")]
    assert naive["seeds"] == 2 and naive["gap"] == [40.0, 20.0]
    assert naive["share_of_naive_gap"] == [1.0, 1.0]
    assert naive["class_accuracy"] == pytest.approx([0.6, 0.7])  # mean over the domains
    assert rows[("naive", "mse")]["share_of_naive_gap"] == pytest.approx([0.5, 0.75])
    assert rows[("edadm", "method")]["share_of_naive_gap"] == pytest.approx([0.25, 0.25])
    assert rows[("edadm", "method")]["class_accuracy"] == []


def test_report_prints_mean_and_spread_and_refuses_other_files(report, tmp_path, caplog):
    good = tmp_path / "q.json"
    good.write_text(json.dumps(RESULTS))
    caplog.set_level("INFO", logger="fedmatch.bench")
    report.main([str(good)])
    text = caplog.text
    assert (
        "| W4A8 | naive | mse | federated | 2 | 117.50 ± 3.54 | 17.50 ± 3.54 | 0.62 ± 0.18 | – |"
        in text
    )
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"rows": []}))
    with pytest.raises(SystemExit, match=r"other\.json: not a quant_bench\.py result"):
        report.main([str(bad)])
