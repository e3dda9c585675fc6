"""From a run config to a distillation and to the evaluation protocol (client and server)."""

from __future__ import annotations

from typing import Any

import torch

from fedmatch.config import RunConfig
from fedmatch.data.types import NUM_CLASSES
from fedmatch.distill.common import DistillHistory, InitMode
from fedmatch.distill.dm import distill_dm
from fedmatch.distill.evaluate import EvalProtocol
from fedmatch.distill.feature_nets import pretrain_feature_nets
from fedmatch.distill.multiformation import check_factor
from fedmatch.distill.ncfm import distill_ncfm
from fedmatch.params import DistillParams

__all__ = ["DEFAULT_LR", "distill_from_config", "distill_net", "eval_protocol", "method_lr"]

# distill-lr = 0 picks the method's own default: DM's SGD at 1.0 (main_DM.py ``lr_img``),
# NCFM's AdamW at 0.01 (its released configs).
DEFAULT_LR = {"dm": 1.0, "ncfm": 0.01}


def method_lr(cfg: RunConfig) -> float:
    return cfg.params(DistillParams).lr or DEFAULT_LR[cfg.params(DistillParams).method]


def distill_net(cfg: RunConfig) -> dict[str, Any]:
    """The ConvNet both methods embed with: the run's width, depth and normalisation, and
    ``distill.net-padding`` for its first convolution.

    Distillation always uses a ConvNet, even when ``model`` is ResNet-18: DM and its
    successors fail to distil through BatchNorm ResNets (see the DM issue tracker).
    """
    return {
        "width": cfg.model_width,
        "depth": cfg.model_depth,
        "norm": cfg.model_norm,
        "first_padding": cfg.params(DistillParams).net_padding,
    }


def eval_protocol(cfg: RunConfig) -> EvalProtocol:
    """The synthetic-set protocol with the run's ``eval-epochs`` and ``dsa-strategy``."""
    return EvalProtocol(
        epochs=cfg.params(DistillParams).eval_epochs,
        dsa_strategy=cfg.params(DistillParams).dsa_strategy,
    )


def distill_from_config(
    cfg: RunConfig,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    seed: int,
    device: torch.device,
    init: InitMode | None = None,
) -> tuple[torch.Tensor, torch.Tensor, DistillHistory]:
    """Run the distillation ``distill-method`` names, with every run-config knob applied.

    ``init`` overrides ``distill-init`` (local virtual data starts from ``virtual-init``).
    """
    try:
        check_factor(cfg.params(DistillParams).factor, (images.shape[2], images.shape[3]))
    except ValueError as err:
        raise ValueError(f"run-config key 'distill.factor': {err}") from None
    generator = torch.Generator().manual_seed(seed)
    common: dict[str, Any] = {
        "num_classes": NUM_CLASSES,
        "lr": method_lr(cfg),
        "batch_real": cfg.params(DistillParams).batch_real,
        "init": init or cfg.params(DistillParams).init,
        "net": distill_net(cfg),
        "dsa_strategy": cfg.params(DistillParams).dsa_strategy,
        "factor": cfg.params(DistillParams).factor,
        "generator": generator,
        "device": device,
    }
    if cfg.params(DistillParams).method == "dm":
        return distill_dm(
            images,
            labels,
            cfg.params(DistillParams).ipc,
            cfg.params(DistillParams).steps,
            image_step=cfg.params(DistillParams).image_step,
            compile=cfg.params(DistillParams).compile,
            **common,
        )
    pool = None
    if cfg.params(DistillParams).ncfm_feature_nets > 0:
        pool = pretrain_feature_nets(
            images,
            labels,
            cfg.params(DistillParams).ncfm_feature_nets,
            cfg.params(DistillParams).ncfm_feature_epochs,
            num_classes=NUM_CLASSES,
            net=distill_net(cfg),
            generator=generator,
            device=device,
        )
    return distill_ncfm(
        images,
        labels,
        cfg.params(DistillParams).ipc,
        cfg.params(DistillParams).steps,
        alpha=cfg.params(DistillParams).ncfm_alpha,
        num_frequencies=cfg.params(DistillParams).ncfm_frequencies,
        sampler_lr=cfg.params(DistillParams).ncfm_psi_lr,
        feature_nets=pool,
        calibration_weight=cfg.params(DistillParams).ncfm_calibration,
        step_per_class=cfg.params(DistillParams).ncfm_step_per_class,
        **common,
    )
