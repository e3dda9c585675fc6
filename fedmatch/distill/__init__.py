"""Dataset distillation: DSA, DM, NCFM, gradient matching and the synthetic-set evaluation.

Plain PyTorch, device-agnostic, seeded by a ``torch.Generator``; no Flower here.
"""

from __future__ import annotations

from fedmatch.distill.common import DM_NET, DistillHistory, measure_peak_memory
from fedmatch.distill.dm import class_means, distill_dm, dm_loss
from fedmatch.distill.dsa import DIGIT_STRATEGY, DSAConfig, DSAParams, parse_strategy, sample_dsa
from fedmatch.distill.evaluate import (
    EvalProtocol,
    SetScore,
    convnet_factory,
    evaluate_set,
    measure_accuracy,
    random_real_subset,
    train_on_set,
)
from fedmatch.distill.gradient_matching import gradient_distance, layer_distance, model_gradients
from fedmatch.distill.ncfm import (
    FrequencySampler,
    characteristic_function,
    distill_ncfm,
    minmax_step,
    ncfd,
    ncfd_per_class,
)

__all__ = [
    "DIGIT_STRATEGY",
    "DM_NET",
    "DSAConfig",
    "DSAParams",
    "DistillHistory",
    "EvalProtocol",
    "FrequencySampler",
    "SetScore",
    "characteristic_function",
    "class_means",
    "convnet_factory",
    "distill_dm",
    "distill_ncfm",
    "dm_loss",
    "evaluate_set",
    "gradient_distance",
    "layer_distance",
    "measure_accuracy",
    "measure_peak_memory",
    "minmax_step",
    "model_gradients",
    "ncfd",
    "ncfd_per_class",
    "parse_strategy",
    "random_real_subset",
    "sample_dsa",
    "train_on_set",
]
