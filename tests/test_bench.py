"""Suite files, cell names, resume planning and the app snapshot (no Flower started)."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import pytest

from fedmatch.bench.launch import snapshot_app
from fedmatch.bench.planning import BenchError, cell_name, plan
from fedmatch.bench.suite import Suite, SuiteError
from fedmatch.config import RunConfig
from fedmatch.data.embedded import EMBEDDED_DOMAINS
from fedmatch.localrun import REPO
from fedmatch.methods import method_names, methods
from fedmatch.results import MetricRow, RunRecorder

SUITES = REPO / "benchmarks" / "suites"
TINY = {
    "name": "tiny",
    "federation": {"num-supernodes": 3},
    "base": {"domains": "mnist,optdigits,font-digits", "num-server-rounds": 2},
    "axes": {"strategy": ["fedavg", "fedbn"], "seed": [0, 1]},
}


def with_change(table: str, key: str, value) -> dict:
    data = copy.deepcopy(TINY)
    data.setdefault(table, {})[key] = value
    return data


def test_shipped_suites_are_valid():
    quick = Suite.load(SUITES / "digits-quick.toml")
    cells = quick.cells()
    # Every classifier strategy but FedKA, which needs a held-out domain (fedka-lodo.toml), and
    # FedLGD, whose virtual-data protocol has its own suite (fedlgd-digits.toml); the diffusion
    # strategies report FID, not accuracy (benchmarks/generator_bench.py).
    generators = {m.name for m in methods().values() if m.model == "diffusion"}
    classifiers = set(method_names()) - {"fedka", "fedlgd", *generators}
    assert {c.cfg.strategy for c in cells} == classifiers
    assert {c.cfg.seed for c in cells} == {0, 1}
    assert len(cells) == 2 * len(classifiers)
    fedlgd = Suite.load(SUITES / "fedlgd-digits.toml").cells()
    assert {c.cfg.strategy for c in fedlgd} == {"fedlgd", "fedavg", "fedprox"}
    # The baselines train on the local virtual data FedLGD starts from.
    assert {c.cfg.train_data for c in fedlgd} == {"distilled"}
    assert {c.cfg.tables["distill"].ipc for c in fedlgd} == {10, 50} and len(fedlgd) == 18
    lodo = Suite.load(SUITES / "fedka-lodo.toml").cells()
    assert {c.cfg.strategy for c in lodo} == {"fedavg", "fedka"}
    assert {c.cfg.target_domain for c in lodo} == set(EMBEDDED_DOMAINS)
    assert all(c.cfg.domains == "all" and c.cfg.dataset == "embedded" for c in cells)
    assert quick.federation.num_supernodes == 5  # one client per embedded domain

    paper = Suite.load(SUITES / "digits-paper.toml")
    for cell in paper.cells():
        cfg = cell.cfg
        assert (cfg.num_server_rounds, cfg.lr, cfg.batch_size, cfg.local_epochs) == (
            100,
            0.01,
            32,
            1,
        )
        assert (cfg.model, cfg.model_width, cfg.partitioning) == ("convnet", 128, "domain")
        assert (cfg.momentum, cfg.weight_decay, cfg.dataset) == (0.0, 0.0, "digit-five")


def test_cells_are_the_product_of_the_axes_with_stable_names():
    suite = Suite.from_dict(TINY)
    names = [c.name for c in suite.cells()]
    assert names == [
        "strategy-fedavg_seed-0",
        "strategy-fedavg_seed-1",
        "strategy-fedbn_seed-0",
        "strategy-fedbn_seed-1",
    ]
    assert names == [c.name for c in Suite.from_dict(copy.deepcopy(TINY)).cells()]
    cell = suite.cells()[3]
    assert cell.overrides == {**TINY["base"], "strategy": "fedbn", "seed": 1}
    assert cell.run_config(Path("/r"), resume=True) == {
        **cell.overrides,
        "runs-dir": "/r",
        "run-name": cell.name,
        "resume": True,
    }


def test_cell_names_are_valid_run_names_and_distinct():
    a = cell_name({"domains": "mnist,optdigits", "lr": 0.05})
    b = cell_name({"domains": "mnist/optdigits", "lr": 0.05})
    assert a != b
    assert a.startswith("domains-mnist-optdigits-") and a.endswith("_lr-0.05")
    for name in (a, b, cell_name({"server-eval": False})):
        RunConfig.from_flower({"run-name": name})  # raises if not a valid run name
    assert cell_name({"server-eval": False}) == "server-eval-false"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (with_change("federation", "num-supernode", 3), "unknown key 'federation.num-supernode'"),
        (with_change("federation", "num-supernodes", 0), "'federation.num-supernodes' = 0"),
        (with_change("base", "lr", -1.0), "run-config key 'lr' = -1.0: Input should be greater"),
        (
            with_change("base", "lrr", 0.1),
            "[base]: unknown run-config key 'lrr' (did you mean 'lr'?)",
        ),
        (with_change("base", "run-name", "x"), "key 'run-name' is set by `fedmatch bench`"),
        (with_change("axes", "strategy", ["fedfoo"]), "'strategy' = 'fedfoo': unknown method"),
        (with_change("axes", "seed", []), "axis 'seed' = []: give at least one value"),
        (with_change("axes", "seed", [1, 1]), "axis 'seed' = [1, 1]: lists a value more than once"),
        (with_change("axes", "domains", ["x"]), "set in both [base] and [axes]"),
        (with_change("base", "domains", "mnist,foo"), "unknown domain(s) 'foo'"),
        (with_change("base", "min-available-nodes", 4), "exceeds [federation] num-supernodes = 3"),
        (with_change("report", "target-accuracy", 2), "'report.target-accuracy' = 2"),
        ({**TINY, "name": "a b"}, "key 'name' = 'a b'"),
        ({k: v for k, v in TINY.items() if k != "federation"}, "'federation' is missing"),
    ],
)
@pytest.mark.hostile("run-config")
def test_bad_suites_are_refused_naming_the_key(data: dict, expected: str):
    with pytest.raises(SuiteError) as err:
        Suite.from_dict(data, "s.toml")
    assert expected in str(err.value)


@pytest.mark.hostile("run-config")
def test_a_base_mistake_is_reported_once_not_per_cell():
    with pytest.raises(SuiteError) as err:
        Suite.from_dict(with_change("base", "lr", -1.0))
    assert str(err.value).count("run-config key 'lr'") == 1


@pytest.mark.hostile("run-config")
def test_unreadable_suite_files(tmp_path: Path):
    with pytest.raises(SuiteError, match="does not exist"):
        Suite.load(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("name = \n")
    with pytest.raises(SuiteError, match="not valid TOML"):
        Suite.load(tmp_path / "bad.toml")


def _record(runs_dir: Path, overrides: dict, rounds_done: int, finish: bool) -> None:
    """A run directory as the ServerApp leaves it after ``rounds_done`` rounds."""
    cfg = RunConfig.from_flower({**overrides, "runs-dir": str(runs_dir)})
    recorder = RunRecorder.open(cfg, {"num_nodes": 3})
    for rnd in range(1, rounds_done + 1):
        recorder.append([MetricRow(rnd, 0, "mnist", "test-accuracy", 0.5)])
    if finish:
        recorder.write_summary()


def test_plan_skips_finished_cells_and_resumes_the_others(tmp_path: Path):
    suite = Suite.from_dict(TINY)
    cells = suite.cells()
    runs = tmp_path / "runs"
    first, second, third, _ = cells
    _record(runs, {**first.overrides, "run-name": first.name}, 2, finish=True)
    _record(runs, {**second.overrides, "run-name": second.name}, 1, finish=False)
    # Finished with fewer rounds than the suite now asks for: continue it.
    _record(
        runs,
        {**third.overrides, "run-name": third.name, "num-server-rounds": 1},
        1,
        finish=True,
    )
    actions = [(p.cell.name, p.action) for p in plan(cells, runs)]
    assert actions == [
        (first.name, "skip"),
        (second.name, "resume"),
        (third.name, "resume"),
        (cells[3].name, "run"),
    ]


def test_plan_refuses_a_folder_holding_another_config(tmp_path: Path):
    cells = Suite.from_dict(TINY).cells()
    runs = tmp_path / "runs"
    cell = cells[0]
    _record(runs, {**cell.overrides, "run-name": cell.name, "lr": 0.5}, 2, finish=True)
    with pytest.raises(BenchError) as err:
        plan(cells, runs)
    assert f"{runs / cell.name}: lr: 0.5 -> 0.01" in str(err.value)

    shorter = Suite.from_dict(with_change("base", "num-server-rounds", 1)).cells()
    other = tmp_path / "other"
    _record(other, {**shorter[0].overrides, "run-name": shorter[0].name}, 1, finish=True)
    assert plan(shorter, other)[0].action == "skip"
    # Fewer rounds than a saved run has cannot be resumed.
    _record(other, {**cells[1].overrides, "run-name": cells[1].name}, 2, finish=True)
    with pytest.raises(BenchError, match="num-server-rounds: 2 -> 1"):
        plan(shorter, other)


def test_plan_accepts_runs_from_before_a_key_existed(tmp_path: Path):
    """A run saved by an older fedmatch lacks the keys added since; their defaults reproduce
    the old behaviour, so the run still belongs to the grid (unless the suite sets one)."""
    cells = Suite.from_dict(TINY).cells()
    runs = tmp_path / "runs"
    cell = cells[0]
    _record(runs, {**cell.overrides, "run-name": cell.name}, 2, finish=True)
    config_path = runs / cell.name / "config.json"
    saved = json.loads(config_path.read_text())
    del saved["run_config"]["generator.critic-steps"]
    config_path.write_text(json.dumps(saved))
    assert plan(cells, runs)[0].action == "skip"

    changed = Suite.from_dict(with_change("base", "generator.critic-steps", 7)).cells()
    with pytest.raises(BenchError, match=r"generator\.critic-steps: None -> 7"):
        plan(changed, runs)


def test_snapshot_holds_the_app_and_not_the_virtualenv(tmp_path: Path):
    app = snapshot_app(REPO, tmp_path / "app")
    pyproject = tomllib.loads((app / "pyproject.toml").read_text())
    assert pyproject["tool"]["flwr"]["app"]["components"]["serverapp"]
    for package in ("fedmatch", "strategies", "clients"):
        source = sorted(p.relative_to(REPO) for p in (REPO / package).rglob("*.py"))
        copied = sorted(p.relative_to(app) for p in (app / package).rglob("*.py"))
        assert copied == source
    assert not (app / ".venv").exists() and not (app / "runs").exists()
