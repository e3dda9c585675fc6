"""A method from outside fedmatch, registered the way a third party would.

A package ships this module and declares, in its own ``pyproject.toml``::

    [project.entry-points."fedmatch.methods"]
    toy = "toy_method:METHOD"

``tests/test_third_party_method.py`` installs it that way (a ``.dist-info`` beside the
module on ``PYTHONPATH``) and runs it through ``flwr run`` without touching fedmatch.

The method: FedAvg whose clients add an L2 pull of the weights towards zero,
``(strength/2)·||w||²``, and whose server records the mean squared weight norm it received
(``toy-weight-norm``) each round.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord
from pydantic import Field

from clients import classifier
from fedmatch.config import RunConfig
from fedmatch.methods import Method
from fedmatch.params import ParamsTable
from fedmatch.records import arrays_to_state
from fedmatch.results import SERVER, MetricRow
from strategies.fedavg import FedAvgStrategy


class ToyParams(ParamsTable):
    """``[tool.flwr.app.config.toy]``."""

    table: ClassVar[str] = "toy"

    strength: float = Field(0.0, ge=0, le=10)
    """weight of the L2 pull towards zero, (strength/2)·||w||²"""


class ToyStrategy(FedAvgStrategy):
    name = "toy"

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        states = [arrays_to_state(r.content["arrays"]) for r in replies if r.has_content()]
        norms = [sum(float(t.float().pow(2).sum()) for t in s.values()) for s in states]
        aggregated, metrics = super().aggregate_train(server_round, replies)
        if norms:
            self.record(
                [MetricRow(server_round, SERVER, "all", "toy-weight-norm", sum(norms) / len(norms))]
            )
        return aggregated, metrics


def _l2_pull(cfg: RunConfig, model: torch.nn.Module, device: torch.device):
    strength = cfg.params(ToyParams).strength

    def term(net: torch.nn.Module, *_: torch.Tensor) -> torch.Tensor:
        return 0.5 * strength * sum(p.pow(2).sum() for p in net.parameters())

    return term if strength > 0 else None


def handle_train(msg: Message, context: Context) -> Message:
    return classifier.handle_train(msg, context, make_extra_loss=_l2_pull)


METHOD = Method(
    name="toy",
    strategy="toy_method:ToyStrategy",
    summary="toy: FedAvg with an L2 pull towards zero (a third-party example)",
    train="toy_method:handle_train",
    params="toy_method:ToyParams",
)
