from __future__ import annotations

import pytest
import torch
from flwr.app import ArrayRecord

from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.methods import methods, tables
from fedmatch.models.registry import norm_parameter_names
from fedmatch.records import state_to_arrays
from strategies.base import NodeInfo
from strategies.fedavg import FedAvgStrategy as FedAvg
from strategies.fedbn import FedBNStrategy as FedBN


def nodes(n: int) -> list[NodeInfo]:
    # Node ids deliberately out of partition order.
    return [NodeInfo(1000 - i, i, f"d{i}", 10, 5, "cpu") for i in range(n)]


def test_sampling_is_seeded_by_round_and_independent_of_node_order():
    cfg = RunConfig(fraction_train=0.5, seed=3)
    a = FedAvg(cfg, nodes(10))
    b = FedAvg(cfg, list(reversed(nodes(10))))
    picks = [[n.partition_id for n in a.sample(0.5, r, 0)] for r in range(1, 6)]
    assert picks == [[n.partition_id for n in b.sample(0.5, r, 0)] for r in range(1, 6)]
    assert all(len(p) == 5 for p in picks)
    assert len({tuple(p) for p in picks}) > 1  # rounds differ
    other_seed = FedAvg(RunConfig(fraction_train=0.5, seed=4), nodes(10))
    assert picks != [[n.partition_id for n in other_seed.sample(0.5, r, 0)] for r in range(1, 6)]
    assert [n.partition_id for n in a.sample(1.0, 1, 0)] == list(range(10))


def test_fedbn_keeps_normalisation_layers_off_the_wire():
    cfg = RunConfig(model_width=8)
    model = model_from_config(cfg)
    arrays: ArrayRecord = state_to_arrays(model.state_dict())
    local = norm_parameter_names(model)
    assert local  # the instance-norm ConvNet has affine norm parameters
    sent = FedBN(cfg, nodes(2)).outgoing_keys(arrays)
    assert set(sent) == set(arrays.keys()) - local
    assert FedAvg(cfg, nodes(2)).outgoing_keys(arrays) == list(arrays.keys())


def test_fedprox_client_adds_the_proximal_term_from_its_table():
    from clients.fedprox import proximal_term
    from strategies.fedprox import FedProxParams

    cfg = RunConfig.from_flower({"strategy": "fedprox", "fedprox.proximal-mu": 0.25})
    assert cfg.params(FedProxParams).proximal_mu == 0.25
    model = torch.nn.Linear(2, 1)
    term = proximal_term(cfg, model, torch.device("cpu"))
    assert term is not None and float(term(model).detach()) == 0.0  # at the anchor
    with torch.no_grad():
        model.weight += 1.0
    assert float(term(model).detach()) == pytest.approx(0.25 / 2 * 2)  # (mu/2)·||Δw||², 2 weights
    off = RunConfig.from_flower({"strategy": "fedprox", "fedprox.proximal-mu": 0.0})
    assert proximal_term(off, model, torch.device("cpu")) is None


def test_every_registered_method_resolves_to_its_parts():
    for method in methods().values():
        assert method.strategy_class().name == method.name
        assert callable(method.train_handler())
        for table in method.table_names():
            assert table in tables()
