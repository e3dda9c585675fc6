"""Helpers the baselines share: parameter/buffer split and a deterministic weighted mean."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

# Tensors by state-dict name.
State = dict[str, torch.Tensor]


def parameter_names(model: nn.Module) -> list[str]:
    """Names of the trainable parameters, the tensors the baselines' math acts on.

    Buffers (BatchNorm running statistics, ``num_batches_tracked``) have no gradient:
    the methods' corrections do not apply to them and they are averaged as in FedAvg.
    """
    return [name for name, _ in model.named_parameters()]


def split_parameters(state: Mapping[str, torch.Tensor], names: Iterable[str]) -> State:
    """The entries of ``state`` named in ``names`` (in ``names`` order)."""
    return {name: state[name] for name in names}


def weighted_mean(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Σ_i p_i·s_i with p_i = w_i / Σ_j w_j, key by key, in the order ``states`` are given.

    Summed in float64 so the result does not depend on accumulation error, then cast
    back to each tensor's dtype (integer buffers are rounded).
    """
    if not states:
        raise ValueError("weighted_mean needs at least one state")
    if len(weights) != len(states):
        raise ValueError(f"{len(states)} states but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to a positive number, got {list(weights)}")
    out: State = {}
    for key, first in states[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for state, weight in zip(states, weights, strict=True):
            acc += state[key].detach().cpu().to(torch.float64) * (float(weight) / total)
        out[key] = (
            acc.round().to(first.dtype) if not first.is_floating_point() else acc.to(first.dtype)
        )
    return out


def zeros_like(state: Mapping[str, torch.Tensor]) -> State:
    """A state of zeros shaped like ``state`` (on the CPU)."""
    return {key: torch.zeros_like(value, device="cpu") for key, value in state.items()}


def squared_norm(state: Mapping[str, torch.Tensor]) -> float:
    """Σ over tensors of ‖t‖², as a float (for logging the size of a state)."""
    return float(sum(value.detach().double().pow(2).sum() for value in state.values()))
