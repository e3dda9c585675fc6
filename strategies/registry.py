"""Strategy name (run-config key ``strategy``) to class."""

from __future__ import annotations

from strategies.base import FedMatchStrategy
from strategies.fedavg import FedAvgStrategy
from strategies.fedbn import FedBNStrategy
from strategies.feddm import FedDMStrategy
from strategies.feddyn import FedDynStrategy
from strategies.fedka import FedKAStrategy
from strategies.fedlgd import FedLGDStrategy
from strategies.fednova import FedNovaStrategy
from strategies.fedprox import FedProxStrategy
from strategies.generators import DiffusionTeacherStrategy, DisBackStrategy, DMD2Strategy
from strategies.moon import MoonStrategy
from strategies.quantization import DiffusionPTQStrategy
from strategies.scaffold import ScaffoldStrategy
from strategies.vhl import VHLStrategy

STRATEGIES: dict[str, type[FedMatchStrategy]] = {
    cls.name: cls
    for cls in (
        FedAvgStrategy,
        FedProxStrategy,
        FedBNStrategy,
        FedKAStrategy,
        FedDMStrategy,
        ScaffoldStrategy,
        FedNovaStrategy,
        FedDynStrategy,
        MoonStrategy,
        VHLStrategy,
        FedLGDStrategy,
        DiffusionTeacherStrategy,
        DMD2Strategy,
        DisBackStrategy,
        DiffusionPTQStrategy,
    )
}
