"""FedProx (Li et al., MLSys 2020): clients minimise F_k(w) + (mu/2)||w - w^t||^2 (Eq. 2).

The server side is FedAvg; the client adds the term through ``fedmatch.train.proximal_loss``
with ``fedprox.proximal-mu`` from its run config.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from fedmatch.params import ParamsTable
from strategies.base import FedMatchStrategy


class FedProxParams(ParamsTable):
    """``[tool.flwr.app.config.fedprox]``."""

    table: ClassVar[str] = "fedprox"

    proximal_mu: float = Field(0.01, ge=0, le=1e4)  # mu of Eq. 2
    """FedProx μ (used by `fedprox` only)"""


class FedProxStrategy(FedMatchStrategy):
    name = "fedprox"
