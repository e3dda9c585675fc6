"""`diffusion.teacher-weighting`: the server averages the clients' teachers by examples or alike."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedmatch.config import ConfigError, RunConfig
from fedmatch.factories.diffusion import TEACHER_ACTION, teacher_key
from fedmatch.records import arrays_to_state, state_to_arrays
from strategies.base import NodeInfo
from strategies.generators import EQUAL_WEIGHT_KEY, DiffusionTeacherStrategy

BASE = {"diffusion.unet-channels": "8,16"}


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Flower sets these in a ServerApp process; new messages read them.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _aggregate(weighting: str, client_metrics: list[dict]) -> dict[str, torch.Tensor]:
    """One aggregation of two clients' teachers, all ones and all threes, by the strategy."""
    cfg = RunConfig.from_flower({**BASE, "diffusion.teacher-weighting": weighting})
    nodes = [NodeInfo(100 + i, i, "?", 10, 10, "cpu") for i in range(2)]
    strategy = DiffusionTeacherStrategy(cfg, nodes)
    sent = state_to_arrays({"w": torch.zeros(3)})
    strategy.current_arrays = sent
    replies = []
    for node, value, metrics in zip(nodes, (1.0, 3.0), client_metrics, strict=True):
        msg = Message(RecordDict({"arrays": sent}), dst_node_id=node.node_id,
                      message_type=TEACHER_ACTION)  # fmt: skip
        content = RecordDict(
            {
                "arrays": state_to_arrays({"w": torch.full((3,), value)}),
                "metrics": MetricRecord(metrics),
            }
        )
        replies.append(Message(content, reply_to=msg))
    aggregated, _ = strategy.aggregate_train(1, replies)
    assert aggregated is not None
    return arrays_to_state(aggregated)


def test_examples_weighs_by_num_examples_and_uniform_weighs_alike():
    metrics = [{"num-examples": 1, "teacher-loss": 0.5}, {"num-examples": 3, "teacher-loss": 0.7}]
    by_examples = _aggregate("examples", metrics)["w"]
    uniform = _aggregate("uniform", metrics)["w"]
    torch.testing.assert_close(by_examples, torch.full((3,), (1 * 1.0 + 3 * 3.0) / 4))
    torch.testing.assert_close(uniform, torch.full((3,), (1.0 + 3.0) / 2))


def test_uniform_ignores_a_weight_a_client_sends_under_the_servers_key():
    hostile = [
        {"num-examples": 1, "teacher-loss": 0.5, EQUAL_WEIGHT_KEY: 1e9},
        {"num-examples": 3, "teacher-loss": 0.7},
    ]
    torch.testing.assert_close(_aggregate("uniform", hostile)["w"], torch.full((3,), 2.0))


def test_weighting_is_part_of_the_cache_key_and_validated():
    plain = RunConfig.from_flower(BASE)
    uniform = RunConfig.from_flower({**BASE, "diffusion.teacher-weighting": "uniform"})
    explicit = RunConfig.from_flower({**BASE, "diffusion.teacher-weighting": "examples"})
    assert teacher_key(plain, 2, 2) != teacher_key(uniform, 2, 2)
    # Unset, the key is the one every teacher cached before it existed had.
    assert teacher_key(plain, 2, 2) == teacher_key(explicit, 2, 2)
    with pytest.raises(ConfigError, match=r"teacher-weighting.*'equal'"):
        RunConfig.from_flower({**BASE, "diffusion.teacher-weighting": "equal"})
