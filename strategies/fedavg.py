"""FedAvg (McMahan et al., AISTATS 2017): the example-weighted mean of client models, Eq. in Alg. 1.

The averaging itself is Flower's ``FedAvg.aggregate_train``; ``FedMatchStrategy``
adds seeded sampling, ordered aggregation and recording.
"""

from __future__ import annotations

from strategies.base import FedMatchStrategy


class FedAvgStrategy(FedMatchStrategy):
    name = "fedavg"
