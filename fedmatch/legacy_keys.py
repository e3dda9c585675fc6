"""Run-config keys before the namespaced tables -> their names now.

Run directories and benchmark results written before the tables existed store these
flat keys in ``config.json``; ``fedmatch report`` translates them (``translate``) and
an unknown-key error names the new spelling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_TABLES: dict[str, dict[str, str]] = {
    "fedprox": {"proximal-mu": "proximal-mu"},
    "scaffold": {"scaffold-server-lr": "server-lr"},
    "feddyn": {"feddyn-alpha": "alpha"},
    "moon": {"moon-mu": "mu", "moon-temperature": "temperature"},
    "vhl": {"vhl-weight": "weight", "vhl-virtual-per-class": "virtual-per-class"},
    "fedka": {
        "target-access": "target-access",
        "target-samples": "target-samples",
        "target-batch-size": "target-batch-size",
        "mmd-weight": "mmd-weight",
        "mmd-bandwidth-base": "mmd-bandwidth-base",
        "mmd-bandwidth-multipliers": "mmd-bandwidth-multipliers",
        "mmd-estimator": "mmd-estimator",
        "align-schedule": "align-schedule",
        "align-gamma": "align-gamma",
        "vote-threshold": "vote-threshold",
        "finetune-steps": "finetune-steps",
        "finetune-lr": "finetune-lr",
        "finetune-weight": "finetune-weight",
        "finetune-balance": "finetune-balance",
        "fedka-broadcast": "broadcast",
        "domain-head": "domain-head",
        "domain-weight": "domain-weight",
    },
    "distill": {
        "ipc": "ipc",
        "distill-method": "method",
        "distill-steps": "steps",
        "distill-lr": "lr",
        "distill-batch-real": "batch-real",
        "distill-init": "init",
        "distill-factor": "factor",
        "dsa-strategy": "dsa-strategy",
        "ncfm-alpha": "ncfm-alpha",
        "ncfm-frequencies": "ncfm-frequencies",
        "ncfm-psi-lr": "ncfm-psi-lr",
        "ncfm-feature-nets": "ncfm-feature-nets",
        "ncfm-feature-epochs": "ncfm-feature-epochs",
        "ncfm-calibration": "ncfm-calibration",
        "ncfm-step-per-class": "ncfm-step-per-class",
        "eval-epochs": "eval-epochs",
        "virtual-init": "virtual-init",
        "virtual-cache": "virtual-cache",
    },
    "fedlgd": {
        f"fedlgd-{key}": key
        for key in (
            "refresh-every",
            "refresh-until",
            "local-steps",
            "server-steps",
            "server-ipc",
            "image-lr",
            "regulariser",
            "lambda",
            "temperature",
            "gm-target",
            "gm-distance",
            "save-images",
        )
    },
    "diffusion": {
        key: key
        for key in (
            "unet-channels",
            "unet-layers-per-block",
            "unet-attention",
            "unet-cross-attention",
            "teacher-steps",
            "teacher-lr",
            "teacher-rounds",
            "teacher-checkpoint",
            "teacher-ddim-steps",
            "fid-samples",
            "fid-feature-steps",
            "grid-per-class",
        )
    },
    "generator": {
        "generator-steps": "steps",
        "generator-lr": "lr",
        "generator-nfe": "nfe",
        "critic-steps": "critic-steps",
        "gan-weight-generator": "gan-weight-generator",
        "gan-weight-critic": "gan-weight-critic",
    },
    "disback": {
        "disback-nodes": "nodes",
        "disback-degradation-steps": "degradation-steps",
        "disback-switch": "switch",
    },
    "quant": {
        f"quant-{key}": key
        for key in (
            "bits",
            "method",
            "groups",
            "per-timestep",
            "calibration-source",
            "calibration-samples",
            "recon-iters",
            "tdac-lambda",
            "eval-personal",
        )
    },
}

LEGACY_KEYS: dict[str, str] = {
    old: f"{table}.{new}" for table, keys in _TABLES.items() for old, new in keys.items()
}


def translate(config: Mapping[str, Any]) -> dict[str, Any]:
    """A flat run config with every pre-table key renamed to its dotted key now."""
    return {LEGACY_KEYS.get(key, key): value for key, value in config.items()}
