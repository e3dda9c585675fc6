"""FedDyn (Acar, Zhao, Matas, Mattina, Whatmough & Saligrama, "Federated Learning Based on
Dynamic Regularization", ICLR 2021), Algorithm 1.

Client k, given the server model θ^{t−1}, solves (Alg. 1)::

    θ_k^t = argmin_θ  L_k(θ) − ⟨∇L_k(θ_k^{t−1}), θ⟩ + (α/2)‖θ − θ^{t−1}‖²

and, from the first-order condition of that problem, updates its gradient state (Alg. 1)::

    ∇L_k(θ_k^t) = ∇L_k(θ_k^{t−1}) − α(θ_k^t − θ^{t−1})

(starting from ∇L_k(θ_k^0) = 0).  The server over the sampled set P_t of the m clients
(Alg. 1)::

    h^t = h^{t−1} − α·(1/m) Σ_{k∈P_t} (θ_k^t − θ^{t−1})
    θ^t = (1/|P_t|) Σ_{k∈P_t} θ_k^t − (1/α) h^t

The local problem is solved approximately by the run's local SGD on the penalised loss
(``dynamic_regulariser``); the gradient state therefore follows that update with the θ_k^t the
SGD reached, as in the official code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from fedmatch.baselines.common import State

# Slot of the client's gradient state ∇L_k(θ_k^{t−1}) in its local state.
CLIENT_STATE_SLOT = "feddyn-gradient"


def dynamic_regulariser(
    gradient_state: Mapping[str, torch.Tensor],
    server_params: Mapping[str, torch.Tensor],
    alpha: float,
):
    """The ``extra_loss`` hook −⟨∇L_k(θ_k^{t−1}), θ⟩ + (α/2)‖θ − θ^{t−1}‖² (Alg. 1).

    ``gradient_state`` and ``server_params`` must be on the model's device.
    """

    def term(model: nn.Module, *_: torch.Tensor) -> torch.Tensor:
        linear, quadratic = [], []
        for name, param in model.named_parameters():
            if name not in server_params:
                continue
            linear.append((gradient_state[name] * param).sum())
            quadratic.append((param - server_params[name]).pow(2).sum())
        return -torch.stack(linear).sum() + 0.5 * alpha * torch.stack(quadratic).sum()

    return term


def client_gradient_update(
    gradient_state: Mapping[str, torch.Tensor],
    local_params: Mapping[str, torch.Tensor],
    server_params: Mapping[str, torch.Tensor],
    alpha: float,
) -> State:
    """∇L_k(θ_k^t) = ∇L_k(θ_k^{t−1}) − α(θ_k^t − θ^{t−1}) (Alg. 1), on the CPU."""
    return {
        name: gradient_state[name].cpu()
        - alpha * (local_params[name].detach().cpu() - server_params[name].detach().cpu())
        for name in server_params
    }


def server_update(
    h: Mapping[str, torch.Tensor],
    server_params: Mapping[str, torch.Tensor],
    client_params: Sequence[Mapping[str, torch.Tensor]],
    *,
    alpha: float,
    num_clients: int,
) -> tuple[State, State]:
    """Alg. 1, server step: returns (h^t, θ^t); sums in the order given, in float64."""
    if not client_params:
        raise ValueError("server_update needs at least one client model")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    new_h: State = {}
    new_theta: State = {}
    sampled = len(client_params)
    for name, value in server_params.items():
        base = value.detach().cpu().to(torch.float64)
        clients = [c[name].detach().cpu().to(torch.float64) for c in client_params]
        drift = sum(c - base for c in clients)
        h_t = h[name].to(torch.float64) - alpha * drift / num_clients
        new_h[name] = h_t.to(h[name].dtype)
        new_theta[name] = (sum(clients) / sampled - h_t / alpha).to(value.dtype)
    return new_h, new_theta
