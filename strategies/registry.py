"""Strategy name (run-config key ``strategy``) to class."""

from __future__ import annotations

from strategies.base import FedMatchStrategy
from strategies.fedavg import FedAvgStrategy
from strategies.fedbn import FedBNStrategy
from strategies.feddm import FedDMStrategy
from strategies.fedka import FedKAStrategy
from strategies.fedprox import FedProxStrategy

STRATEGIES: dict[str, type[FedMatchStrategy]] = {
    cls.name: cls
    for cls in (FedAvgStrategy, FedProxStrategy, FedBNStrategy, FedKAStrategy, FedDMStrategy)
}
