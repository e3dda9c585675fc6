"""What the distiller workload and the ``feddm`` strategy exchange: message type, record names.

Kept in ``fedmatch`` so that ``clients/`` and ``strategies/`` share one definition without
importing each other; the tensors <-> record conversion goes through ``fedmatch.records``.
"""

from __future__ import annotations

import torch

from fedmatch.records import arrays_to_state, state_to_arrays

__all__ = [
    "DISTILL_ACTION",
    "MESSAGE_TYPE",
    "RETURN_FLAG",
    "SYNTHETIC_KEY",
    "synthetic_from_record",
    "synthetic_record",
]

DISTILL_ACTION = "distill"  # ClientApp route: @app.train("distill")
MESSAGE_TYPE = f"train.{DISTILL_ACTION}"
# Config-record flag: reply with the synthetic set (otherwise it stays on the client).
RETURN_FLAG = "return-synthetic"
SYNTHETIC_KEY = "synthetic"  # ArrayRecord name of the synthetic set in a reply


def synthetic_record(images: torch.Tensor, labels: torch.Tensor):
    """The set as an ArrayRecord: ``images`` (N, C, H, W) float32, ``labels`` (N,) int64."""
    return state_to_arrays({"images": images, "labels": labels})


def synthetic_from_record(record) -> tuple[torch.Tensor, torch.Tensor]:
    state = arrays_to_state(record)
    missing = {"images", "labels"} - set(state)
    if missing:
        raise ValueError(f"a synthetic-set record lacks {sorted(missing)}; has {sorted(state)}")
    return state["images"], state["labels"]
