"""MOON (Li, He & Song, CVPR 2021): FedAvg on the server, the model-contrastive loss (Eq. 3)
on the clients (``fedmatch.baselines.moon``, ``clients/baselines.py``).

Clients read ``moon.mu`` and ``moon.temperature`` from their run config; each keeps its
previous local model in its local state.  Communication: as FedAvg.  No server state.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from fedmatch.params import ParamsTable
from strategies.base import FedMatchStrategy


class MoonParams(ParamsTable):
    """``[tool.flwr.app.config.moon]``."""

    table: ClassVar[str] = "moon"

    mu: float = Field(1.0, ge=0, le=1e4)  # weight of the contrastive loss (Eq. 3)
    """MOON weight μ of the model-contrastive loss (0 = plain FedAvg training)"""
    temperature: float = Field(0.5, gt=0, le=1e3)  # tau
    """MOON temperature τ of the model-contrastive loss"""


class MoonStrategy(FedMatchStrategy):
    name = "moon"
