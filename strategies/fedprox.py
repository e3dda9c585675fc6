"""FedProx (Li et al., MLSys 2020): clients minimise F_k(w) + (mu/2)||w - w^t||^2 (Eq. 2).

The server side is FedAvg plus sending ``proximal-mu``; the client adds the
term through ``fedmatch.train.proximal_loss``.
"""

from __future__ import annotations

from strategies.base import FedMatchStrategy


class FedProxStrategy(FedMatchStrategy):
    name = "fedprox"

    def train_config(self, server_round: int) -> dict[str, int | float | str | bool]:
        return {"proximal-mu": float(self.cfg.proximal_mu)}
