"""Feature alignment math (FedKA): MK-MMD, federated voting, gradient reversal, schedules.

Plain PyTorch, device-agnostic and free of Flower, so it is unit-tested on its own.
"""

from fedmatch.align.dann import domain_loss, grad_reverse
from fedmatch.align.fedka import (
    FinetuneResult,
    finetune_on_pseudo_labels,
    group_effect,
    predict_logits,
    ramp,
    schedule_weight,
)
from fedmatch.align.mmd import DEFAULT_MULTIPLIERS, gaussian_bandwidths, mk_mmd, parse_multipliers
from fedmatch.align.voting import federated_vote

__all__ = [
    "DEFAULT_MULTIPLIERS",
    "FinetuneResult",
    "domain_loss",
    "federated_vote",
    "finetune_on_pseudo_labels",
    "gaussian_bandwidths",
    "grad_reverse",
    "group_effect",
    "mk_mmd",
    "parse_multipliers",
    "predict_logits",
    "ramp",
    "schedule_weight",
]
