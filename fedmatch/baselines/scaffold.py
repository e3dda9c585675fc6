"""SCAFFOLD (Karimireddy, Kale, Mohri, Reddi, Stich & Suresh, "SCAFFOLD: Stochastic Controlled
Averaging for Federated Learning", ICML 2020), Algorithm 1 with option II.

Client i, given the server model x and control variate c, starts from y_i = x and takes K
local steps of (Alg. 1)::

    y_i ← y_i − η_l (g_i(y_i) − c_i + c)

then updates its own control variate by option II (Eq. 4 / Alg. 1)::

    c_i⁺ = c_i − c + (x − y_i) / (K·η_l)

and sends (Δy_i, Δc_i) = (y_i − x, c_i⁺ − c_i).  The server (Alg. 1)::

    (Δx, Δc) = (1/|S|) Σ_{i∈S} (Δy_i, Δc_i)
    x ← x + η_g Δx,        c ← c + (|S|/N) Δc

Averages are uniform over the sampled clients, as in Alg. 1 (so c stays the mean of all N
client variates when every c_i starts at 0).

Option II assumes plain SGD, where (x − y_i)/(K·η_l) is the mean corrected gradient of the K
steps.  With local momentum ρ > 0 (the run's ``momentum``), y_i = x − η_l Σ_k a_k (g_k − c_i + c)
with a_k = (1 − ρ^{K−k})/(1 − ρ), and dividing by K would over-estimate that mean by up to
1/(1 − ρ) (10x at ρ = 0.9), which makes the correction overshoot.  ``client_control_update``
therefore divides by η_l·‖a‖₁ (FedNova's effective number of steps,
``fednova.momentum_norm``): the a-weighted mean of the corrected gradients, and exactly
K·η_l when ρ = 0, i.e. the paper's Eq. 4.  Use ``momentum=0`` to reproduce the paper.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedmatch.baselines.common import State
from fedmatch.baselines.fednova import momentum_norm
from fedmatch.train import GradHook

# Names of the array records on the wire (server -> client, client -> server).
CONTROL_RECORD = "scaffold-control"
DELTA_CONTROL_RECORD = "scaffold-delta-control"
# Slot of the client's own control variate in its local state.
CLIENT_STATE_SLOT = "scaffold-control"


def correction(c_global: Mapping[str, torch.Tensor], c_local: Mapping[str, torch.Tensor]) -> State:
    """c − c_i, the term SCAFFOLD adds to every local gradient (Alg. 1)."""
    return {name: c_global[name] - c_local[name] for name in c_global}


def correction_hook(
    c_global: Mapping[str, torch.Tensor],
    c_local: Mapping[str, torch.Tensor],
    device: torch.device | str = "cpu",
) -> GradHook:
    """A ``grad_hook`` for ``fedmatch.train.train_local`` that turns g_i(y) into g_i(y) − c_i + c.

    A parameter without a gradient this step (unused by the loss) has g_i = 0, so its
    corrected gradient is the correction alone.
    """
    delta = {name: value.to(device) for name, value in correction(c_global, c_local).items()}

    def hook(model: nn.Module) -> None:
        for name, param in model.named_parameters():
            if name not in delta:
                continue
            if param.grad is None:
                param.grad = delta[name].clone()
            else:
                param.grad.add_(delta[name])

    return hook


def client_control_update(
    c_local: Mapping[str, torch.Tensor],
    c_global: Mapping[str, torch.Tensor],
    x: Mapping[str, torch.Tensor],
    y: Mapping[str, torch.Tensor],
    *,
    steps: int,
    lr: float,
    momentum: float = 0.0,
) -> tuple[State, State]:
    """Option II (Eq. 4): c_i⁺ = c_i − c + (x − y_i)/(K·η_l); returns (c_i⁺, Δc_i = c_i⁺ − c_i).

    With ``momentum`` ρ > 0, K becomes ‖a‖₁ = ``fednova.momentum_norm(K, ρ)`` (module
    docstring); for ρ = 0 that is K.
    """
    if steps < 1 or lr <= 0:
        raise ValueError(f"need steps ≥ 1 and lr > 0, got steps={steps}, lr={lr}")
    divisor = momentum_norm(steps, momentum) * lr
    new: State = {}
    delta: State = {}
    for name in c_global:
        drift = (x[name].detach().cpu() - y[name].detach().cpu()) / divisor
        new[name] = c_local[name] - c_global[name] + drift
        delta[name] = new[name] - c_local[name]
    return new, delta


def server_update(
    x: Mapping[str, torch.Tensor],
    ys: Sequence[Mapping[str, torch.Tensor]],
    c: Mapping[str, torch.Tensor],
    delta_cs: Sequence[Mapping[str, torch.Tensor]],
    *,
    global_lr: float,
    num_clients: int,
) -> tuple[State, State]:
    """Alg. 1, server step: x ← x + η_g·mean(y_i − x), c ← c + (|S|/N)·mean(Δc_i).

    ``ys`` are the clients' models y_i (the server forms Δy_i = y_i − x itself); sums run
    in the order given, in float64.
    """
    if not ys or len(ys) != len(delta_cs):
        raise ValueError(f"need one Δc per client model, got {len(ys)} and {len(delta_cs)}")
    if num_clients < len(ys):
        raise ValueError(f"num_clients={num_clients} is smaller than |S|={len(ys)}")
    sampled = len(ys)
    new_x: State = {}
    new_c: State = {}
    for name, value in x.items():
        base = value.detach().cpu().to(torch.float64)
        dx = sum(y[name].detach().cpu().to(torch.float64) - base for y in ys) / sampled
        new_x[name] = (base + global_lr * dx).to(value.dtype)
    for name, value in c.items():
        dc = sum(d[name].detach().cpu().to(torch.float64) for d in delta_cs) / sampled
        new_c[name] = (value.to(torch.float64) + (sampled / num_clients) * dc).to(value.dtype)
    return new_x, new_c
