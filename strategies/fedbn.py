"""FedBN (Li et al., ICLR 2021): FedAvg over every layer except normalisation layers (Alg. 1).

Each client keeps its own normalisation parameters and statistics; only the
other arrays travel and are averaged, which also makes FedBN's per-round
communication smaller than FedAvg's by the size of those layers.  With the
default instance-norm ConvNet the local layers are the affine parameters of
the GroupNorm(width, width) layers.
"""

from __future__ import annotations

from flwr.app import ArrayRecord

from fedmatch.config import RunConfig
from fedmatch.factories.models import model_from_config
from fedmatch.models.registry import norm_parameter_names
from strategies.base import FedMatchStrategy, NodeInfo


class FedBNStrategy(FedMatchStrategy):
    name = "fedbn"
    global_model_is_complete = False

    def __init__(self, cfg: RunConfig, nodes: list[NodeInfo]) -> None:
        super().__init__(cfg, nodes)
        self.local_keys = norm_parameter_names(model_from_config(cfg))

    def outgoing_keys(self, arrays: ArrayRecord) -> list[str]:
        return [key for key in arrays if key not in self.local_keys]
