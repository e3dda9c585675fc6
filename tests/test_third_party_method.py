"""A method from another package: registered by entry point, validated, listed, run, reported.

``tests/plugins/toy_method.py`` is "installed" the way pip installs a package (the module and
a ``.dist-info`` with its ``fedmatch.methods`` entry point in a folder on the path); nothing
under ``fedmatch/``, ``strategies/`` or ``clients/`` knows it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fedmatch import methods
from fedmatch.config import ConfigError, RunConfig
from fedmatch.localrun import PrivateFlower
from tests.flower_harness import REPO, read_jsonl

PLUGIN = Path(__file__).parent / "plugins" / "toy_method.py"


def install_plugin(site: Path) -> Path:
    """The toy package as pip would leave it: its module and its dist-info."""
    site.mkdir(parents=True, exist_ok=True)
    shutil.copy(PLUGIN, site / "toy_method.py")
    info = site / "toy_method-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-method\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[fedmatch.methods]\ntoy = toy_method:METHOD\n")
    return site


@pytest.fixture
def plugin_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    site = install_plugin(tmp_path / "site")
    monkeypatch.syspath_prepend(str(site))
    methods.reload()
    yield site
    monkeypatch.undo()
    sys.modules.pop("toy_method", None)
    methods.reload()


def test_an_entry_point_method_is_registered_validated_and_listed(plugin_on_path: Path):
    assert "toy" in methods.method_names()
    cfg = RunConfig.from_flower({"strategy": "toy", "toy.strength": 0.5})
    assert cfg.table("toy").strength == 0.5
    assert cfg.method.strategy_class().__name__ == "ToyStrategy"
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"strategy": "toy", "toy.strength": -1.0})
    assert "'toy.strength' = -1.0" in str(err.value)
    with pytest.raises(ConfigError, match=r"did you mean 'toy\.strength'"):
        RunConfig.from_flower({"toy.strenght": 1.0})

    from fedmatch.config_reference import method_listing, reference_markdown

    assert "toy: FedAvg with an L2 pull" in method_listing()
    assert "toy.strength = 0.0" in method_listing("toy")
    assert "| `toy.strength` | `0.0` |" in reference_markdown()


def test_without_the_package_the_method_is_unknown():
    methods.reload()
    assert "toy" not in methods.method_names()
    with pytest.raises(ConfigError, match="unknown method"):
        RunConfig.from_flower({"strategy": "toy"})


def test_a_malformed_entry_point_is_refused_with_its_name(tmp_path: Path, monkeypatch):
    site = install_plugin(tmp_path / "site")
    (site / "toy_method-0.1.dist-info" / "entry_points.txt").write_text(
        "[fedmatch.methods]\ntoy = toy_method:ToyParams\n"
    )
    monkeypatch.syspath_prepend(str(site))
    methods.reload()
    try:
        with pytest.raises(methods.MethodError, match=r"entry point 'toy'.*not a fedmatch"):
            methods.method_names()
    finally:
        monkeypatch.undo()
        sys.modules.pop("toy_method", None)
        methods.reload()


@pytest.mark.e2e
def test_the_toy_method_runs_through_flwr_run_and_reaches_the_report(
    tmp_path: Path, data_cache: Path
):
    from fedmatch.bench.launch import snapshot_app

    site = install_plugin(tmp_path / "site")
    # The app a third party deploys: fedmatch's, with the plugin's table in its run config.
    app = snapshot_app(REPO, tmp_path / "app")
    with (app / "pyproject.toml").open("a") as handle:
        handle.write("\n[tool.flwr.app.config.toy]\nstrength = 0.0\n")
    flower = PrivateFlower.create(
        tmp_path / "flwr-home",
        extra_env={"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1"},
        app=app,
    )
    runs = tmp_path / "runs"
    try:
        result = flower.run(
            {
                "strategy": "toy",
                "toy.strength": 0.01,
                "domains": "mnist,optdigits",
                "train-subset": 200,
                "model-width": 8,
                "num-server-rounds": 2,
                "runs-dir": str(runs),
                "run-name": "toy",
                "cache-dir": str(data_cache),
            },
            num_supernodes=2,
        )
    finally:
        flower.stop()
    run_dir = runs / "toy"
    assert (run_dir / "summary.json").exists(), (result.stdout + result.stderr)[-4000:]
    saved = json.loads((run_dir / "config.json").read_text())["run_config"]
    assert saved["strategy"] == "toy" and saved["toy.strength"] == 0.01
    norms = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["metric"] == "toy-weight-norm"]
    assert [r["round"] for r in norms] == [1, 2] and all(r["value"] > 0 for r in norms)

    out = tmp_path / "r"
    report = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedmatch.cli",
            "report",
            str(run_dir),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env={
            "PYTHONPATH": str(site),
            "PATH": str(Path(sys.executable).parent),
            "HOME": str(tmp_path),
        },
        cwd=REPO,
    )
    assert report.returncode == 0, report.stderr
    with (out / "summary.csv").open() as handle:
        (row,) = list(csv.DictReader(handle))
    assert row["strategy"] == "toy"
    assert float(row["server.toy-weight-norm"]) == pytest.approx(norms[-1]["value"])
    assert float(row["final_mean_accuracy"]) > 0.1
