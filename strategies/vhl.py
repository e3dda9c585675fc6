"""VHL (Tang et al., ICML 2022): FedAvg on the server; on the clients, cross-entropy on the
run's shared virtual data plus the class-conditional alignment of natural to virtual features
(``fedmatch.baselines.vhl``, ``clients/baselines.py``).

The server sends ``vhl-weight`` and ``vhl-virtual-per-class``; every client generates the same
virtual dataset from the run seed with an untrained generator, so communication is FedAvg's.
No server state.
"""

from __future__ import annotations

from strategies.base import FedMatchStrategy


class VHLStrategy(FedMatchStrategy):
    name = "vhl"

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        return {
            "vhl-weight": float(self.cfg.vhl_weight),
            "vhl-virtual-per-class": int(self.cfg.vhl_virtual_per_class),
        }
