"""The one place where torch tensors meet Flower records (and where bytes are counted)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from flwr.app import ArrayRecord


def state_to_arrays(state: Mapping[str, torch.Tensor], keys: Iterable[str] | None = None):
    """An ``ArrayRecord`` holding ``state`` (or only ``keys`` of it), in state-dict order."""
    wanted = None if keys is None else set(keys)
    return ArrayRecord(
        {
            name: tensor.detach().cpu()
            for name, tensor in state.items()
            if wanted is None or name in wanted
        }
    )


def arrays_to_state(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The tensors of an ``ArrayRecord`` by name."""
    return dict(record.to_torch_state_dict())


def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def numpy_to_arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: torch.from_numpy(np.asarray(a)) for name, a in arrays.items()})


def arrays_nbytes(record: ArrayRecord | None) -> int:
    """Payload bytes of an ``ArrayRecord`` (the serialised tensors, without message framing)."""
    if record is None:
        return 0
    return int(sum(len(array.data) for array in record.values()))
