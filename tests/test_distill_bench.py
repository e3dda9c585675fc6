"""benchmarks/distill_bench.py end to end on a tiny grid: JSON, table, progress and errors."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import pytest

from fedmatch.localrun import REPO


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "distill_bench", REPO / "benchmarks" / "distill_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY = [
    "--domains", "mnist",
    "--ipc", "1",
    "--seeds", "0",
    "--steps", "3",
    "--batch-real", "4",
    "--width", "8",
    "--eval-width", "8",
    "--eval-epochs", "2",
    "--full-epochs", "1",
    "--log-every", "1",
]  # fmt: skip


def test_tiny_grid_writes_every_cell_logs_progress_and_summarizes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    out = tmp_path / "grid.json"
    caplog.set_level(logging.INFO)
    bench.main([*TINY, "--cache-dir", str(tmp_path / "cache"), "--out", str(out)])

    saved = json.loads(out.read_text())
    assert saved["complete"] is True
    rows = {row["method"]: row for row in saved["rows"]}
    assert set(rows) == {"full", "random", "dm", "ncfm"}
    for row in rows.values():
        assert len(row["accuracies"]) == 1 and 0.0 <= row["accuracies"][0] <= 1.0
    assert rows["full"]["ipc"] == "all" and rows["full"]["eval_epochs"] == 1
    for method in ("dm", "ncfm"):
        assert rows[method]["steps"] == 3
        assert rows[method]["seconds_per_step"] > 0
        assert math.isfinite(rows[method]["final_loss"])

    # Long runs say what they are doing: every distillation step (--log-every 1), and every
    # set scored with its size and epochs.
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("DM step 3/3") for m in messages)
    assert any(m.startswith("NCFM step 3/3") for m in messages)
    assert any("mnist ipc 1 random seed 0: scoring 10 images (2 epochs" in m for m in messages)
    assert any(m.startswith("protocol on 10 images: 1 epochs") for m in messages)

    capsys.readouterr()
    bench.main(["--summarize", str(out)])
    table = capsys.readouterr().out
    assert "| mnist | 1 | random |" in table
    assert "| mnist | all | full |" in table
    assert sum(line.startswith("| mnist |") for line in table.splitlines()) == 4


def test_unknown_method_is_refused_by_name(tmp_path: Path) -> None:
    bench = load_bench()
    out = tmp_path / "grid.json"
    with pytest.raises(SystemExit, match=r"--methods: unknown \['gan'\]"):
        bench.main([*TINY, "--methods", "dm,gan", "--out", str(out)])
    assert not out.exists()


def test_the_feature_net_pool_cache_loads_without_unpickling(tmp_path: Path) -> None:
    import argparse

    import torch

    bench = load_bench()
    args = argparse.Namespace(
        cache_dir=str(tmp_path), ncfm_feature_nets=1, ncfm_feature_epochs=1, pool_cache=True
    )
    x = torch.rand(20, 3, 28, 28)
    y = torch.arange(20) % 10
    net = {"width": 8, "depth": 1, "norm": "instancenorm"}
    pool, _, cached = bench.feature_net_pool("mnist", x, y, 0, args, net, torch.device("cpu"))
    assert not cached
    again, _, cached = bench.feature_net_pool("mnist", x, y, 0, args, net, torch.device("cpu"))
    assert cached and again.net == pool.net and again.train_accuracy == pool.train_accuracy
    for new, old in zip(again.trained, pool.trained, strict=True):
        assert all(torch.equal(new[k], old[k]) for k in old)

    # A cache in the old format (the pickled dataclass) is retrained, never unpickled.
    (path,) = (tmp_path / "ncfm-feature-nets").iterdir()
    torch.save({"pool": pool, "seconds": 1.0}, path)
    _, _, cached = bench.feature_net_pool("mnist", x, y, 0, args, net, torch.device("cpu"))
    assert not cached
    assert torch.load(path, weights_only=True)["pool"]["net"] == net
