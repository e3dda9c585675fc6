"""What FedLGD's clients and server exchange: message type and record names.

Kept in ``fedmatch`` so that ``clients/`` and ``strategies/`` share one definition without
importing each other.
"""

from __future__ import annotations

from pathlib import Path

import torch

from fedmatch.distill.stats import ClassStats
from fedmatch.records import arrays_to_state, state_to_arrays

__all__ = [
    "CLASS_GRADS_FLAG",
    "CLASS_GRADS_KEY",
    "GLOBAL_VIRTUAL_KEY",
    "REFRESH_FLAG",
    "REGULARISE_FLAG",
    "STATS_ACTION",
    "STATS_KEY",
    "STATS_MESSAGE_TYPE",
    "class_grads_from_record",
    "class_grads_record",
    "stats_from_record",
    "stats_record",
    "virtual_images_dir",
]

STATS_ACTION = "class_stats"  # ClientApp route: @app.query("class_stats") (an identifier)
STATS_MESSAGE_TYPE = f"query.{STATS_ACTION}"
STATS_KEY = "class-stats"  # reply record: per-class, per-channel counts, means, variances
GLOBAL_VIRTUAL_KEY = "fedlgd-global"  # train message record: the global virtual images
CLASS_GRADS_KEY = "fedlgd-class-grads"  # reply record (gm-target 'client-gradients')
# Config-record flags of a FedLGD training round.
REFRESH_FLAG = "fedlgd-refresh"  # refresh the local virtual data by DM first
REGULARISE_FLAG = "fedlgd-regularise"  # add λ · L_reg (non-refresh rounds)
CLASS_GRADS_FLAG = "fedlgd-send-class-grads"


def stats_record(stats: ClassStats):
    return state_to_arrays(stats.to_tensors())


def stats_from_record(record) -> ClassStats:
    return ClassStats.from_tensors(arrays_to_state(record))


def class_grads_record(grads: dict[int, list[torch.Tensor]]):
    """Per-class gradient lists as one ArrayRecord: key ``"<class>/<parameter index>"``."""
    return state_to_arrays(
        {f"{c}/{i}": g.detach().cpu() for c, gs in grads.items() for i, g in enumerate(gs)}
    )


def class_grads_from_record(record) -> dict[int, list[torch.Tensor]]:
    state = arrays_to_state(record)
    out: dict[int, dict[int, torch.Tensor]] = {}
    for key, tensor in state.items():
        c, i = key.split("/")
        out.setdefault(int(c), {})[int(i)] = tensor
    return {c: [parts[i] for i in sorted(parts)] for c, parts in out.items()}


def virtual_images_dir(run_dir: str) -> Path:
    """Where ``fedlgd-save-images`` puts the PNG grids (clients and server alike)."""
    return Path(run_dir) / "virtual-images"
