from __future__ import annotations

from flwr.app import ArrayRecord

from fedmatch.config import RunConfig
from fedmatch.models.from_config import model_from_config
from fedmatch.models.registry import norm_parameter_names
from fedmatch.records import state_to_arrays
from strategies.base import NodeInfo
from strategies.registry import STRATEGIES


def nodes(n: int) -> list[NodeInfo]:
    # Node ids deliberately out of partition order.
    return [NodeInfo(1000 - i, i, f"d{i}", 10, 5, "cpu") for i in range(n)]


def test_sampling_is_seeded_by_round_and_independent_of_node_order():
    cfg = RunConfig(fraction_train=0.5, seed=3)
    a = STRATEGIES["fedavg"](cfg, nodes(10))
    b = STRATEGIES["fedavg"](cfg, list(reversed(nodes(10))))
    picks = [[n.partition_id for n in a.sample(0.5, r, 0)] for r in range(1, 6)]
    assert picks == [[n.partition_id for n in b.sample(0.5, r, 0)] for r in range(1, 6)]
    assert all(len(p) == 5 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # rounds differ
    other_seed = STRATEGIES["fedavg"](RunConfig(fraction_train=0.5, seed=4), nodes(10))
    assert picks != [[n.partition_id for n in other_seed.sample(0.5, r, 0)] for r in range(1, 6)]
    assert [n.partition_id for n in a.sample(1.0, 1, 0)] == list(range(10))


def test_fedbn_keeps_normalisation_layers_off_the_wire():
    cfg = RunConfig(model_width=8)
    model = model_from_config(cfg)
    arrays: ArrayRecord = state_to_arrays(model.state_dict())
    local = norm_parameter_names(model)
    assert local  # the instance-norm ConvNet has affine norm parameters
    sent = STRATEGIES["fedbn"](cfg, nodes(2)).outgoing_keys(arrays)
    assert set(sent) == set(arrays.keys()) - local
    assert STRATEGIES["fedavg"](cfg, nodes(2)).outgoing_keys(arrays) == list(arrays.keys())


def test_fedprox_sends_mu_and_fedavg_does_not():
    cfg = RunConfig(proximal_mu=0.25)
    assert STRATEGIES["fedprox"](cfg, nodes(2)).train_config(1) == {"proximal-mu": 0.25}
    assert STRATEGIES["fedavg"](cfg, nodes(2)).train_config(1) == {}


def test_every_config_strategy_is_registered():
    allowed = RunConfig.model_fields["strategy"].annotation.__args__
    assert set(allowed) == set(STRATEGIES)
