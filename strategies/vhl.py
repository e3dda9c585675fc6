"""VHL (Tang et al., ICML 2022): FedAvg on the server; on the clients, cross-entropy on the
run's shared virtual data plus the class-conditional alignment of natural to virtual features
(``fedmatch.baselines.vhl``, ``clients/baselines.py``).

Clients read ``vhl.weight`` and ``vhl.virtual-per-class`` from their run config; every
client generates the same virtual dataset from the run seed with an untrained generator, so
communication is FedAvg's.  No server state.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field

from fedmatch.params import ParamsTable
from strategies.base import FedMatchStrategy


class VHLParams(ParamsTable):
    """``[tool.flwr.app.config.vhl]``."""

    table: ClassVar[str] = "vhl"

    weight: float = Field(1.0, ge=0, le=1e4)  # lambda of the feature alignment
    """VHL weight λ of the class-conditional SupCon alignment of natural to virtual features (0 =
    virtual data only)"""
    virtual_per_class: int = Field(100, ge=1)  # virtual images per class
    """VHL virtual images per class, generated from the run seed by an untrained generator on every
    client"""


class VHLStrategy(FedMatchStrategy):
    name = "vhl"
