from __future__ import annotations

import tomllib

import pytest
from flwr.common.config import flatten_dict

from fedmatch.config import ConfigError, RunConfig, all_keys
from fedmatch.config_reference import (
    PYPROJECT_BEGIN,
    PYPROJECT_END,
    defaults_toml,
    reference_markdown,
)
from fedmatch.params import DistillParams
from strategies.fedprox import FedProxParams
from tests.flower_harness import REPO


def pyproject_run_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_exactly_the_config_fields():
    # As Flower hands it over: nested tables flattened to dotted keys.
    table = flatten_dict(pyproject_run_config())
    cfg = RunConfig.from_flower(table)
    assert set(table) == set(cfg.to_flower()) == set(all_keys())
    # The pyproject defaults and the model's defaults must agree, or a run started
    # through Flower and a run built in Python would differ.
    assert cfg == RunConfig()
    assert cfg.to_flower() == table


def test_pyproject_block_and_docs_reference_are_generated_from_the_classes():
    text = (REPO / "pyproject.toml").read_text()
    begin = text.index(PYPROJECT_BEGIN)
    end = text.index(PYPROJECT_END) + len(PYPROJECT_END) + 1
    assert text[begin:end] == defaults_toml(), "run `fedmatch config pyproject` and paste it"
    docs = (REPO / "docs" / "config.md").read_text()
    assert docs == reference_markdown(), "run `fedmatch config docs > docs/config.md`"
    for key in all_keys():
        assert f"`{key}`" in docs


def test_documented_example_is_accepted():
    cfg = RunConfig.from_flower(
        {"strategy": "fedprox", "fedprox.proximal-mu": 0.02, "num-server-rounds": 20}
    )
    assert cfg.strategy == "fedprox" and cfg.num_server_rounds == 20
    assert cfg.params(FedProxParams).proximal_mu == 0.02
    # Nested tables (as in pyproject.toml or a TOML run-config file) mean the same.
    nested = RunConfig.from_flower({"strategy": "fedprox", "fedprox": {"proximal-mu": 0.02}})
    assert nested.params(FedProxParams).proximal_mu == 0.02


@pytest.mark.hostile("run-config")
def test_unknown_keys_get_did_you_mean_and_old_names_their_new_one():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"fedka.mmd-wieght": 1.0, "mmd-" + "weight": 2.0, "sead": 1})
    message = str(err.value)
    assert "'fedka.mmd-wieght'" in message and "did you mean 'fedka.mmd-weight'" in message
    assert "'mmd-weight'" in message and "renamed to 'fedka.mmd-weight'" in message
    assert "'sead'" in message and "did you mean 'seed'" in message
    with pytest.raises(ConfigError, match="did you mean 'fedka'"):
        RunConfig.from_flower({"strategy": "fedkaa"})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("weight-decay", -1.0),
        ("fedprox.proximal-mu", float("inf")),
        ("distill.lr", float("nan")),
        ("fedka.mmd-weight", float("-inf")),
        ("momentum", 1.0),
    ],
)
@pytest.mark.hostile("run-config")
def test_non_finite_and_out_of_range_numbers_are_refused(key, value):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({key: value})
    assert repr(key) in str(err.value)


@pytest.mark.parametrize("name", ["run\n", "a" * 129, "-x", "a/b", "..", "x y"])
@pytest.mark.hostile("run-config")
def test_bad_run_names_are_refused(name):
    with pytest.raises(ConfigError, match="'run-name'"):
        RunConfig.from_flower({"run-name": name})


def test_replace_validates():
    cfg = RunConfig().replace({"distill.ipc": 3, "seed": 2})
    assert cfg.params(DistillParams).ipc == 3 and cfg.seed == 2
    with pytest.raises(ConfigError, match=r"'distill\.ipc'"):
        cfg.replace({"distill.ipc": 0})


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"strategy": "fedfoo"}, ["'strategy'", "'fedfoo'", "'fedavg'", "'fedbn'"]),
        ({"num-server-rounds": -1}, ["'num-server-rounds'", "-1", "greater than or equal to 1"]),
        ({"partitioning": "dirichlet", "alpha": 0}, ["'alpha'", "= 0", "greater than 0"]),
        ({"partitioning": "shards"}, ["'partitioning'", "'shards'", "'dirichlet'"]),
        ({"runs-dir": "runs"}, ["'runs-dir'", "'runs'", "absolute"]),
        ({"run-name": "a b"}, ["'run-name'", "'a b'"]),
        ({"dataset": "digit-five"}, ["data-root", "digit-five"]),
        ({"resume": True}, ["resume", "run-name"]),
        ({"domains": "mnist,,optdigits"}, ["'domains'"]),
    ],
)
@pytest.mark.hostile("run-config")
def test_bad_values_name_key_value_and_what_is_allowed(overrides, fragments):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


@pytest.mark.hostile("run-config")
def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"strategy": "fedfoo", "num-server-rounds": -1, "lr": 0})
    message = str(err.value)
    assert "'strategy'" in message and "'num-server-rounds'" in message and "'lr'" in message


@pytest.mark.hostile("run-config")
def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"num-rounds": 3})
    assert "'num-rounds'" in str(err.value) and "num-server-rounds" in str(err.value)


@pytest.mark.hostile("run-config")
def test_unknown_domain_names_the_allowed_ones():
    cfg = RunConfig(domains="mnist,usps")
    with pytest.raises(ConfigError) as err:
        cfg.domain_names(("mnist", "optdigits"))
    assert "'usps'" in str(err.value) and "optdigits" in str(err.value)
    assert RunConfig().domain_names(("a", "b")) == ("a", "b")
    assert RunConfig(domains=" b , a").domain_names(("a", "b")) == ("b", "a")


@pytest.mark.hostile("run-config")
def test_fedmatch_check_validates_without_flower(capsys):
    from fedmatch.cli import main

    assert main(["check", "--app", str(REPO), "--run-config", "strategy='fedprox'"]) == 0
    assert "ok: strategy 'fedprox'" in capsys.readouterr().out
    bad = "strategy='fedka' fedka.mmd-wieght=2 lr=nan"
    assert main(["check", "--app", str(REPO), "--run-config", bad]) == 2
    err = capsys.readouterr().err
    assert "did you mean 'fedka.mmd-weight'" in err and "'lr' = nan" in err
    # FedKA without a held-out domain: a cross-table rule, reported the same way.
    assert main(["check", "--app", str(REPO), "--run-config", "strategy='fedka'"]) == 2
    assert "needs target-domain" in capsys.readouterr().err
    preset = str(REPO / "presets" / "fedlgd-paper.toml")
    assert main(["check", "--app", str(REPO), "--run-config", preset]) == 0
