from __future__ import annotations

import tomllib

import pytest

from fedmatch.config import ConfigError, RunConfig
from tests.flower_harness import REPO


def pyproject_run_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_defaults_are_exactly_the_config_fields():
    table = pyproject_run_config()
    cfg = RunConfig.from_flower(table)
    assert set(table) == set(cfg.to_flower())
    # The pyproject defaults and the model's defaults must agree, or a run started
    # through Flower and a run built in Python would differ.
    assert cfg == RunConfig()


def test_documented_example_is_accepted():
    cfg = RunConfig.from_flower(
        {"strategy": "fedprox", "proximal-mu": 0.01, "num-server-rounds": 20}
    )
    assert (cfg.strategy, cfg.proximal_mu, cfg.num_server_rounds) == ("fedprox", 0.01, 20)


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
def test_bad_values_name_key_value_and_what_is_allowed(overrides, fragments):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower(overrides)
    for fragment in fragments:
        assert fragment in str(err.value)


def test_every_bad_key_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"strategy": "fedfoo", "num-server-rounds": -1, "lr": 0})
    message = str(err.value)
    assert "'strategy'" in message and "'num-server-rounds'" in message and "'lr'" in message


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as err:
        RunConfig.from_flower({"num-rounds": 3})
    assert "'num-rounds'" in str(err.value) and "num-server-rounds" in str(err.value)


def test_unknown_domain_names_the_allowed_ones():
    cfg = RunConfig(domains="mnist,usps")
    with pytest.raises(ConfigError) as err:
        cfg.domain_names(("mnist", "optdigits"))
    assert "'usps'" in str(err.value) and "optdigits" in str(err.value)
    assert RunConfig().domain_names(("a", "b")) == ("a", "b")
    assert RunConfig(domains=" b , a").domain_names(("a", "b")) == ("b", "a")
