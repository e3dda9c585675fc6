"""FedNova (Wang, Liu, Liang, Joshi & Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020): normalised averaging.

Client i takes τ_i local steps of SGD with momentum ρ and learning rate η; its cumulative
update is x − y_i = η·G_i·a_i with a_i the weights of its τ_i stochastic gradients.  FedNova
averages the *normalised* updates d_i = (x − y_i)/‖a_i‖₁ and rescales by the effective number
of steps (Sec. 4, the FedNova update rule, with aggregation weights w_i = p_i)::

    x ← x − τ_eff · Σ_i p_i d_i,        τ_eff = Σ_i p_i ‖a_i‖₁,        p_i = n_i / Σ_j n_j

For SGD, ‖a_i‖₁ = τ_i; for SGD with (PyTorch-style, heavy-ball) momentum ρ, unrolling
v_k = ρ v_{k−1} + g_k over τ steps gives a_{i,k} = (1 − ρ^{τ−k})/(1 − ρ) and (the paper's
Appendix, and the official code's ``local_normalizing_vec``)::

    ‖a_i‖₁ = [τ_i − ρ(1 − ρ^τ_i)/(1 − ρ)] / (1 − ρ)

When every client takes the same τ the normalisation cancels and FedNova is FedAvg.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from fedmatch.baselines.common import State


def momentum_norm(steps: int, momentum: float) -> float:
    """‖a‖₁ of ``steps`` SGD steps with momentum ρ (fresh momentum buffer): τ when ρ = 0."""
    if steps < 0 or not 0 <= momentum < 1:
        raise ValueError(f"need steps ≥ 0 and 0 ≤ momentum < 1, got {steps}, {momentum}")
    if momentum == 0:
        return float(steps)
    rho = momentum
    return (steps - rho * (1 - rho**steps) / (1 - rho)) / (1 - rho)


def aggregate(
    x: Mapping[str, torch.Tensor],
    ys: Sequence[Mapping[str, torch.Tensor]],
    steps: Sequence[int],
    weights: Sequence[float],
    *,
    momentum: float,
) -> tuple[State, float]:
    """FedNova's update of ``x`` from client models ``ys`` after ``steps`` τ_i local steps.

    Returns (x_new, τ_eff).  Sums run over the clients in the order given, in float64.
    """
    if not ys or not len(ys) == len(steps) == len(weights):
        raise ValueError(
            f"need one step count and weight per client: {len(ys)}, {len(steps)}, {len(weights)}"
        )
    total = float(sum(weights))
    p = [float(w) / total for w in weights]
    norms = [momentum_norm(int(t), momentum) for t in steps]
    if any(n <= 0 for n in norms):
        raise ValueError(f"every client must take at least one step, got {list(steps)}")
    tau_eff = sum(pi * ni for pi, ni in zip(p, norms, strict=True))
    new: State = {}
    for name, value in x.items():
        base = value.detach().cpu().to(torch.float64)
        direction = sum(
            pi * (base - y[name].detach().cpu().to(torch.float64)) / ni
            for pi, ni, y in zip(p, norms, ys, strict=True)
        )
        new[name] = (base - tau_eff * direction).to(value.dtype)
    return new, tau_eff
