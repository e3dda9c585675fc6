"""Lost and failing nodes: ``send_and_collect`` and the strategy's drop handling, on a fake grid.

The fake grid behaves like Flower's two grids where it matters: ``push_messages``
writes each message id into the message's metadata and reports refused messages
as ``""`` (HttpGrid) or leaves them out (InMemoryGrid); the SuperLink's own error
replies carry the SuperLink as their source node.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.task_identity import TaskIdentity

from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.methods import get_method
from fedmatch.records import state_to_arrays
from fedmatch.results import RunRecorder, read_metrics
from strategies.base import NodeInfo, NotEnoughNodesError
from strategies.exchange import send_and_collect

# What a node does with a message: "ok", "raise" (its ClientApp fails), "gone"
# (the SuperLink answers NODE_UNAVAILABLE), "expired" (the SuperLink answers that
# the reply expired), "silent" (no reply ever), "refused" (the push is refused).
Behaviour = Callable[[int, Message], str]


class FakeGrid:
    def __init__(self, behaviour: Behaviour, http_style: bool = True) -> None:
        self.behaviour = behaviour
        self.http_style = http_style
        self.inbox: dict[str, Message] = {}
        self.pulls = 0

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            message_id = uuid.uuid4().hex
            msg.metadata.__dict__["_message_id"] = message_id
            if self.behaviour(msg.metadata.dst_node_id, msg) == "refused":
                if self.http_style:
                    ids.append("")
                continue
            self.inbox[message_id] = msg
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids):
        self.pulls += 1
        replies = []
        for message_id in list(message_ids):
            msg = self.inbox.get(message_id)
            if msg is None:
                continue
            action = self.behaviour(msg.metadata.dst_node_id, msg)
            if action == "silent":
                continue
            del self.inbox[message_id]
            replies.append(_reply(msg, action))
        return replies


def _reply(msg: Message, action: str) -> Message:
    if action == "ok":
        content = RecordDict()
        if msg.metadata.message_type == "train":
            content["arrays"] = msg.content["arrays"]
            content["metrics"] = MetricRecord({"num-examples": 10, "train-loss": 1.0})
        else:
            content["metrics"] = MetricRecord(
                {"num-examples": 5, "test-loss": 1.0, "test-accuracy": 0.5}
            )
        return Message(content, reply_to=msg)
    code = {
        "raise": ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
        "gone": ErrorCode.NODE_UNAVAILABLE,
        "expired": ErrorCode.REPLY_MESSAGE_UNAVAILABLE,
    }[action]
    reply = Message(Error(code=code, reason=action), reply_to=msg)
    if action != "raise":
        reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    return reply


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    # Flower sets these in a ServerApp process; new messages read them.
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _query(node: int) -> Message:
    return Message(RecordDict(), dst_node_id=node, message_type="query")


ACTIONS = {1: "ok", 2: "raise", 3: "gone", 4: "expired", 5: "silent", 6: "refused"}


@pytest.mark.parametrize("http_style", [True, False])
def test_send_and_collect_tells_lost_nodes_from_failing_ones(http_style: bool):
    grid = FakeGrid(lambda node, msg: ACTIONS[node], http_style=http_style)
    collected = send_and_collect(
        grid, [_query(n) for n in ACTIONS], timeout=0.3, pull_interval=0.01
    )
    # Replies (also the ClientApp's own error) come back for the nodes that are there.
    assert sorted(r.metadata.src_node_id for r in collected.replies) == [1, 2]
    assert sorted(collected.gone) == [3, 5, 6]
    assert "round-timeout" in collected.gone[5]
    assert "refused" in collected.gone[6]
    assert collected.failed == {4: "expired"}


def test_send_and_collect_returns_as_soon_as_all_replied():
    grid = FakeGrid(lambda node, msg: "ok")
    collected = send_and_collect(grid, [_query(n) for n in (1, 2)], timeout=60)
    assert len(collected.replies) == 2 and not collected.gone
    assert grid.pulls == 1


def _nodes(n: int) -> list[NodeInfo]:
    return [NodeInfo(100 + i, i, f"d{i}", 10, 5, "cpu") for i in range(n)]


def _run(tmp_path, behaviour: Behaviour, min_nodes: int, rounds: int = 3):
    cfg = RunConfig(
        model_width=4,
        num_server_rounds=rounds,
        min_available_nodes=min_nodes,
        runs_dir=str(tmp_path),
        run_name="drop",
        round_timeout=0.2,
    )
    strategy = get_method("fedavg").strategy_class()(cfg, _nodes(3))
    recorder = RunRecorder.open(cfg)
    arrays = state_to_arrays(model_from_config(cfg).state_dict())
    return (
        strategy,
        recorder,
        lambda: strategy.run_rounds(
            FakeGrid(behaviour), arrays, first_round=1, recorder=recorder, server_evaluate=None
        ),
    )


def _round(msg: Message) -> int:
    return int(msg.content["config"]["server-round"])


@pytest.mark.parametrize("how", ["gone", "silent", "refused"])
def test_a_node_lost_after_round_1_is_dropped_and_the_run_goes_on(tmp_path, how: str):
    def behaviour(node: int, msg: Message) -> str:
        return how if node == 101 and _round(msg) >= 2 else "ok"

    strategy, recorder, run = _run(tmp_path, behaviour, min_nodes=2)
    run()
    rows = read_metrics(recorder.run_dir)
    dropped = [(r.round, r.client) for r in rows if r.metric == "dropped"]
    assert dropped == [(2, 1)]  # recorded once, in the round it was lost
    assert [n.partition_id for n in strategy.nodes] == [0, 2]
    trained = {(r.round, r.client) for r in rows if r.metric == "train-loss"}
    assert trained == {(1, 0), (1, 1), (1, 2), (2, 0), (2, 2), (3, 0), (3, 2)}
    assert recorder.load_checkpoint()["round"] == 3


def test_a_failing_client_app_is_recorded_but_not_dropped(tmp_path):
    def behaviour(node: int, msg: Message) -> str:
        return "raise" if node == 102 and _round(msg) == 2 else "ok"

    strategy, recorder, run = _run(tmp_path, behaviour, min_nodes=3)
    run()
    rows = read_metrics(recorder.run_dir)
    assert {(r.round, r.client) for r in rows if r.metric == "failed"} == {(2, 2)}
    assert not [r for r in rows if r.metric == "dropped"]
    assert len(strategy.nodes) == 3
    assert {r.client for r in rows if r.metric == "train-loss" and r.round == 3} == {0, 1, 2}


def test_below_min_available_nodes_the_run_stops_with_a_clear_error(tmp_path):
    def behaviour(node: int, msg: Message) -> str:
        return "gone" if node in (101, 102) and _round(msg) >= 2 else "ok"

    _, recorder, run = _run(tmp_path, behaviour, min_nodes=2)
    with pytest.raises(NotEnoughNodesError, match="min-available-nodes' = 2") as err:
        run()
    assert "partition(s) [1, 2]" in str(err.value) and "resume=true" in str(err.value)
    rows = read_metrics(recorder.run_dir)
    # Which nodes dropped is kept; the incomplete round is not checkpointed.
    assert {(r.round, r.client) for r in rows if r.metric == "dropped"} == {(2, 1), (2, 2)}
    assert recorder.load_checkpoint()["round"] == 1
