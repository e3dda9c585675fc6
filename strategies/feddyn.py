"""FedDyn (Acar et al., ICLR 2021), Alg. 1; the math is in ``fedmatch.baselines.feddyn``.

The server sends θ^{t−1}; each client reads ``feddyn.alpha`` from its run config, minimises its
loss plus the
dynamic regulariser −⟨∇L_k(θ_k^{t−1}), θ⟩ + (α/2)‖θ − θ^{t−1}‖² and keeps its gradient state
(local state).  The server updates h^t = h^{t−1} − (α/m)Σ_{k∈P_t}(θ_k^t − θ^{t−1}) and sends
θ^t = mean_{k∈P_t} θ_k^t − h^t/α (uniform mean, as in Alg. 1); m counts every client of the
run.  Buffers (BatchNorm statistics) are averaged uniformly.

Communication: as FedAvg.  h is server state: it goes into every checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

import torch
from flwr.app import ArrayRecord, Message, MetricRecord
from pydantic import Field

from fedmatch.baselines import feddyn
from fedmatch.baselines.common import parameter_names, squared_norm, weighted_mean, zeros_like
from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.params import ParamsTable
from fedmatch.records import state_to_arrays
from fedmatch.results import SERVER, MetricRow
from strategies.base import FedMatchStrategy, NodeInfo


class FedDynParams(ParamsTable):
    """``[tool.flwr.app.config.feddyn]``."""

    table: ClassVar[str] = "feddyn"

    alpha: float = Field(0.01, gt=0, le=1e4)  # regularisation strength alpha of Alg. 1
    """FedDyn regularisation strength α (linear + (α/2)‖θ − θᵗ⁻¹‖² penalty, server θ = mean −
    h/α)"""


class FedDynStrategy(FedMatchStrategy):
    name = "feddyn"

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        model = model_from_config(cfg)
        self.param_names = parameter_names(model)
        params = dict(model.named_parameters())
        self.h = zeros_like({n: params[n].detach() for n in self.param_names})
        self.num_clients = len(self.nodes)
        self.alpha = cfg.params(FedDynParams).alpha

    def state_dict(self) -> dict:
        return {"h": {k: v.clone() for k, v in self.h.items()}}

    def load_state_dict(self, state: dict) -> None:
        h = state.get("h")
        if h is not None:
            self.h = {k: torch.as_tensor(v).clone() for k, v in h.items()}

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        collected = self.collect_models(server_round, replies)
        if collected is None:
            return None, None
        valid, x, ys = collected
        self.h, new_params = feddyn.server_update(
            self.h,
            {n: x[n] for n in self.param_names},
            ys,
            alpha=self.alpha,
            num_clients=self.num_clients,
        )
        buffers = [k for k in ys[0] if k not in new_params]
        averaged = weighted_mean([{k: y[k] for k in buffers} for y in ys], [1.0] * len(ys))
        merged = {k: new_params.get(k, averaged.get(k, v)) for k, v in x.items()}
        self.record(
            [MetricRow(server_round, SERVER, "all", "feddyn-h-norm", squared_norm(self.h) ** 0.5)]
        )
        return state_to_arrays(merged), MetricRecord({"num-clients": len(valid)})
