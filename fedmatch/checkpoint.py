"""Checkpoint files that load with ``torch.load(weights_only=True)``, so none can run code.

``torch.load(weights_only=False)`` unpickles, and a crafted ``checkpoint.pt`` could then run
any code on resume.  With ``weights_only=True`` torch rebuilds only tensors and plain Python
values; numpy values of strategy state (arrays, scalars, RNG states) are stored as tensors
tagged with their kind and rebuilt on load.  A file that would need unpickling is refused.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmatch.atomic import atomic_torch_save

__all__ = ["CheckpointError", "read_checkpoint", "write_checkpoint"]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded safely or is not a fedmatch checkpoint."""


# A numpy value in strategy state is stored as {tag: tensor}: torch.load(weights_only=True)
# reads tensors and plain Python values but would have to unpickle a numpy array.
_NDARRAY_TAG = "__fedmatch_ndarray__"
_NPSCALAR_TAG = "__fedmatch_npscalar__"


def write_checkpoint(
    path: Path, server_round: int, arrays: Mapping[str, np.ndarray], strategy_state: Mapping
) -> None:
    """Write a checkpoint that :func:`read_checkpoint` loads without unpickling objects.

    ``strategy_state`` may hold tensors, numpy arrays and scalars (numpy RNG states included),
    numbers, strings, bytes, None, and lists, tuples and dicts of these; anything else raises
    TypeError here, when it is saved, rather than making the file unloadable later.
    """
    atomic_torch_save(
        {
            "round": int(server_round),
            "arrays": {
                name: _numpy_to_tensor(a, f"arrays[{name!r}]") for name, a in arrays.items()
            },
            "strategy_state": _encode(dict(strategy_state), "strategy_state"),
        },
        path,
        failpoint="checkpoint-write",
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's ``round``, ``arrays`` (numpy) and ``strategy_state``, loaded with
    ``weights_only=True``: a file that would need unpickling is refused, never unpickled."""
    try:
        checkpoint = torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        unsafe = _unsafe_globals(path)
        what = (
            f"it names the Python globals {', '.join(unsafe)}"
            if unsafe
            else "it is not a torch.save file of tensors and plain values"
        )
        raise CheckpointError(
            f"{path}: refusing to load this checkpoint: {what}, and loading it would mean "
            "unpickling it, which can run code. "
            "Older fedmatch versions stored numpy arrays of strategy state that way. Delete the "
            "file to restart the run from round 1 (resume=true), or start a new run-name"
        ) from None
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint ({error!r})") from error
    try:
        return _validated(checkpoint)
    except _BadEntry as error:
        raise CheckpointError(f"{path}: not a fedmatch checkpoint: {error}") from None
    except RecursionError:
        raise CheckpointError(f"{path}: not a fedmatch checkpoint: nested too deeply") from None


class _BadEntry(ValueError):
    """One entry of a loaded checkpoint is not what write_checkpoint writes."""


def _validated(checkpoint: Any) -> dict[str, Any]:
    if not isinstance(checkpoint, dict) or not {"round", "arrays", "strategy_state"} <= set(
        checkpoint
    ):
        raise _BadEntry(
            "expected a dict with an int 'round', a dict of tensors 'arrays' and a dict "
            f"'strategy_state', got {_describe(checkpoint)}"
        )
    server_round, arrays = checkpoint["round"], checkpoint["arrays"]
    # bool is an int to Python, and a negative round would make the run redo rounds.
    if isinstance(server_round, bool) or not isinstance(server_round, int) or server_round < 0:
        raise _BadEntry(f"'round' must be an int >= 0, got {server_round!r}")
    if not isinstance(arrays, dict):
        raise _BadEntry(f"'arrays' must be a dict of tensors, got {_describe(arrays)}")
    if not isinstance(checkpoint["strategy_state"], dict):
        raise _BadEntry(
            f"'strategy_state' must be a dict, got {_describe(checkpoint['strategy_state'])}"
        )
    out = {}
    for name, tensor in arrays.items():
        if not isinstance(name, str):
            raise _BadEntry(f"'arrays' keys must be parameter names (str), got {name!r}")
        out[name] = _tensor_to_numpy(tensor, f"arrays[{name!r}]")
    return {
        "round": server_round,
        "arrays": out,
        "strategy_state": _decode(checkpoint["strategy_state"], "strategy_state"),
    }


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"a dict with keys {sorted(map(str, value))[:10]}"
    return f"a {type(value).__module__}.{type(value).__qualname__}"


def _tensor_to_numpy(value: Any, where: str) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise _BadEntry(f"{where} must be a tensor, got {_describe(value)}")
    try:
        # detach: torch.load may rebuild a Parameter that requires grad.
        return value.detach().numpy()
    except (TypeError, RuntimeError) as error:
        raise _BadEntry(
            f"{where}: a {value.dtype} {value.layout} tensor on {value.device} cannot be read as "
            f"a numpy array ({error})"
        ) from None


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a torch.save file names beyond weights_only's, found by parsing the pickle
    opcodes without running them (torch >= 2.5); empty when that is not possible."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a raw pickle, a damaged zip, an older torch: the message says less
        return []


def _numpy_to_tensor(value: Any, where: str) -> torch.Tensor:
    array = np.asarray(value)
    if not array.dtype.isnative or not array.flags.writeable:
        # torch.from_numpy refuses non-native byte order and warns on read-only arrays.
        array = array.astype(array.dtype.newbyteorder("="))
    try:
        return torch.from_numpy(array)
    except TypeError as error:
        raise TypeError(
            f"checkpoint {where}: numpy dtype {array.dtype} cannot be stored as a tensor "
            "(numbers and booleans only)"
        ) from error


def _encode(value: Any, where: str) -> Any:
    if isinstance(value, torch.Tensor) or value is None:
        return value
    if isinstance(value, bool | int | float | complex | str | bytes):
        return value
    if isinstance(value, np.ndarray):
        return {_NDARRAY_TAG: _numpy_to_tensor(value, where)}
    if isinstance(value, np.generic):
        return {_NPSCALAR_TAG: _numpy_to_tensor(value, where)}
    if isinstance(value, Mapping):
        return {k: _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        encoded = [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return encoded if isinstance(value, list) else tuple(encoded)
    raise TypeError(
        f"checkpoint {where}: cannot store a {type(value).__module__}.{type(value).__qualname__}"
        "; strategy state may hold tensors, numpy arrays and scalars, numbers, strings, bytes, "
        "None, and lists, tuples and dicts of these"
    )


def _decode(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        if len(value) == 1 and _NDARRAY_TAG in value:
            return _tensor_to_numpy(value[_NDARRAY_TAG], where)
        if len(value) == 1 and _NPSCALAR_TAG in value:
            array = _tensor_to_numpy(value[_NPSCALAR_TAG], where)
            if array.ndim != 0:
                raise _BadEntry(f"{where}: a numpy scalar must be 0-d, got shape {array.shape}")
            return array[()]
        return {k: _decode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, list | tuple):
        decoded = [_decode(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return decoded if isinstance(value, list) else tuple(decoded)
    return value
