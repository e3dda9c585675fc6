"""FedNova (Wang et al., NeurIPS 2020): normalised averaging; the math is in
``fedmatch.baselines.fednova``.

Clients run the usual local SGD (momentum ``momentum``) and reply with their model and the
number of local steps τ_i they took (metric ``train-steps``, in every reply).  The server
computes ‖a_i‖₁ from τ_i and the momentum, averages the normalised updates (x − y_i)/‖a_i‖₁
with weights p_i = n_i/Σn_j over the sampled clients and steps by τ_eff = Σ p_i‖a_i‖₁.  With
every τ_i equal this is FedAvg.  Buffers (BatchNorm statistics) are averaged as in FedAvg.

Communication: as FedAvg (the model each way; τ_i rides in the metrics).  No server state.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, Message, MetricRecord

from fedmatch.baselines import fednova
from fedmatch.baselines.common import parameter_names, weighted_mean
from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.records import state_to_arrays
from fedmatch.results import SERVER, MetricRow
from strategies.base import FedMatchStrategy, NodeInfo


class FedNovaStrategy(FedMatchStrategy):
    name = "fednova"

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        self.param_names = parameter_names(model_from_config(cfg))

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        collected = self.collect_models(server_round, replies)
        if collected is None:
            return None, None
        valid, x, ys = collected
        metrics = [reply.content["metrics"] for reply in valid]
        steps = [int(m["train-steps"]) for m in metrics]
        weights = [float(m["num-examples"]) for m in metrics]
        new_params, tau_eff = fednova.aggregate(
            {n: x[n] for n in self.param_names},
            ys,
            steps,
            weights,
            momentum=self.cfg.momentum,
        )
        buffers = [k for k in ys[0] if k not in new_params]
        averaged = weighted_mean([{k: y[k] for k in buffers} for y in ys], weights)
        merged = {k: new_params.get(k, averaged.get(k, v)) for k, v in x.items()}
        self.record([MetricRow(server_round, SERVER, "all", "fednova-tau-eff", tau_eff)])
        return state_to_arrays(merged), MetricRecord({"tau-eff": tau_eff})
