"""MOON (Li, He & Song, CVPR 2021): FedAvg on the server, the model-contrastive loss (Eq. 3)
on the clients (``fedmatch.baselines.moon``, ``clients/baselines.py``).

The server sends ``moon-mu`` and ``moon-temperature`` with the model; each client keeps its
previous local model in its local state.  Communication: as FedAvg.  No server state.
"""

from __future__ import annotations

from strategies.base import FedMatchStrategy


class MoonStrategy(FedMatchStrategy):
    name = "moon"

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        return {
            "moon-mu": float(self.cfg.moon_mu),
            "moon-temperature": float(self.cfg.moon_temperature),
        }
