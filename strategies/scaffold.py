"""SCAFFOLD (Karimireddy et al., ICML 2020), Alg. 1 with option II (Eq. 4); the math is in
``fedmatch.baselines.scaffold``.

Per round the server sends the model x and its control variate c (record
``scaffold-control``, one tensor per trainable parameter); each client corrects every local
gradient by c − c_i, updates its own c_i (kept in its local state) and replies with its
model y_i and Δc_i (record ``scaffold-delta-control``).  The server forms Δy_i = y_i − x and
applies x ← x + η_g·mean Δy_i, c ← c + (|S|/N)·mean Δc_i with uniform means over the
sampled clients S of the N in the run (``scaffold.server-lr`` = η_g).  Buffers (BatchNorm
statistics) are averaged uniformly.

Communication per client: the model plus one parameter-sized tensor set each way, so
``bytes-down`` and ``bytes-up`` are each about twice FedAvg's.  c is server state: it goes
into every checkpoint, so a resumed run continues with the same c.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from pydantic import Field

from fedmatch.baselines import scaffold
from fedmatch.baselines.common import parameter_names, squared_norm, weighted_mean, zeros_like
from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.params import ParamsTable
from fedmatch.records import arrays_to_state, state_to_arrays
from fedmatch.results import SERVER, MetricRow
from strategies.base import FedMatchStrategy, NodeInfo


class ScaffoldParams(ParamsTable):
    """``[tool.flwr.app.config.scaffold]``."""

    table: ClassVar[str] = "scaffold"

    server_lr: float = Field(1.0, gt=0, le=1e3)  # global step size eta_g of Alg. 1
    """SCAFFOLD global step size η_g: x ← x + η_g·mean(y_i − x)"""


class ScaffoldStrategy(FedMatchStrategy):
    name = "scaffold"

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        model = model_from_config(cfg)
        self.param_names = parameter_names(model)
        params = dict(model.named_parameters())
        self.control = zeros_like({n: params[n].detach() for n in self.param_names})
        # N in c ← c + (|S|/N)Δc: every client of the run, dropped ones included (their
        # c_i still make up c).
        self.num_clients = len(self.nodes)

    def state_dict(self) -> dict:
        return {"control": {k: v.clone() for k, v in self.control.items()}}

    def load_state_dict(self, state: dict) -> None:
        control = state.get("control")
        if control is not None:
            self.control = {k: torch.as_tensor(v).clone() for k, v in control.items()}

    def train_payload(self, server_round: int) -> dict[str, ArrayRecord]:
        return {scaffold.CONTROL_RECORD: state_to_arrays(self.control)}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        collected = self.collect_models(server_round, replies)
        if collected is None:
            return None, None
        valid, x, ys = collected
        delta_cs = []
        for reply in valid:
            record = reply.content.array_records.get(scaffold.DELTA_CONTROL_RECORD)
            if record is None:
                partition = self.nodes_by_id[reply.metadata.src_node_id].partition_id
                raise RuntimeError(
                    f"round {server_round}: client {partition} replied without its "
                    f"control-variate update (record {scaffold.DELTA_CONTROL_RECORD!r})"
                )
            delta_cs.append(arrays_to_state(record))
        new_params, self.control = scaffold.server_update(
            {n: x[n] for n in self.param_names},
            ys,
            self.control,
            delta_cs,
            global_lr=self.cfg.params(ScaffoldParams).server_lr,
            num_clients=self.num_clients,
        )
        buffers = [k for k in ys[0] if k not in new_params]
        averaged = weighted_mean([{k: y[k] for k in buffers} for y in ys], [1.0] * len(ys))
        merged = {k: new_params.get(k, averaged.get(k, v)) for k, v in x.items()}
        self.record(
            [
                MetricRow(
                    server_round,
                    SERVER,
                    "all",
                    "scaffold-control-norm",
                    squared_norm(self.control) ** 0.5,
                )
            ]
        )
        return state_to_arrays(merged), MetricRecord({"num-clients": len(valid)})
