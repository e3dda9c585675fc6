"""Build the model a run config asks for, with seed-determined initial weights."""

from __future__ import annotations

import torch
from torch import nn

from fedmatch.config import RunConfig
from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES
from fedmatch.models.registry import build_model


def model_from_config(cfg: RunConfig, *, init_seed: int | None = None) -> nn.Module:
    """The run's model; with ``init_seed`` its weights depend only on that seed.

    ``fork_rng`` keeps the caller's global RNG state untouched.
    """
    kwargs: dict[str, object] = {
        "in_channels": IMAGE_SHAPE[0],
        "num_classes": NUM_CLASSES,
        "norm": cfg.model_norm,
    }
    if cfg.model == "convnet":
        # ResNet-18's widths are fixed by its definition; only ConvNet's are keys.
        kwargs.update(width=cfg.model_width, depth=cfg.model_depth)
    if cfg.model == "fedka-cnn":
        # The DANN domain head exists only when the run trains it (FedKA's domain-head).
        kwargs.update(domain_head=cfg.table("fedka").domain_head)
    with torch.random.fork_rng(devices=[]):
        if init_seed is not None:
            torch.manual_seed(init_seed)
        return build_model(cfg.model, **kwargs)
