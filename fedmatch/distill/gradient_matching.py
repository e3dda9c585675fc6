"""Gradient matching: the layer-wise gradient distance of Dataset Condensation (DC).

Zhao, Mopuri & Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021, Eq. 10
(https://github.com/VICO-UoE/DatasetCondensation ``utils.py``: ``match_loss`` and
``distance_wb``).  The distance between two lists of per-parameter gradients is a sum over
layers, and inside a layer over output units, of one minus the cosine similarity:

    D(G^S, G^T) = Σ_layers Σ_i ( 1 − ⟨A_i, B_i⟩ / (||A_i|| ||B_i|| + 1e-6) )

where A_i, B_i are row i of the layer's gradient reshaped to (out_channels, rest): a conv
kernel (out, in, h, w) becomes (out, in·h·w), a linear weight stays (out, in).  One-dimensional
parameters (biases, normalisation scales and shifts) contribute 0, as in the code, which also
means they carry no gradient signal.

Two consequences of the code's definition, kept here: the distance is zero for identical
gradients only up to the 1e-6 in the denominator (1 − |g|²/(|g|² + 1e-6) per row), and an
all-zero row (e.g. a unit whose ReLU never fires) counts 1 whatever the other side is — a
constant that does not affect optimisation.

Besides 'ours', the code's 'mse' (summed squared difference) and 'cos' (one cosine over all
layers' gradients flattened together) variants are available.  FedLGD (Huang et al., TMLR
2024) uses this distance on the server; :func:`model_gradients` builds the gradient lists.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["gradient_distance", "layer_distance", "model_gradients"]

Metric = Literal["ours", "mse", "cos"]
_EPS = 1e-6


def layer_distance(grad_a: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
    """DC's ``distance_wb``: Σ over output rows of (1 − cosine); 0 for 1-D parameters."""
    if grad_a.shape != grad_b.shape:
        raise ValueError(f"gradient shapes differ: {tuple(grad_a.shape)} vs {tuple(grad_b.shape)}")
    if grad_a.dim() <= 1:
        return grad_a.new_zeros(())
    a = grad_a.reshape(grad_a.shape[0], -1)
    b = grad_b.reshape(grad_b.shape[0], -1)
    cosine = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)
    return (1 - cosine).sum()


def gradient_distance(
    grads_a: Sequence[torch.Tensor], grads_b: Sequence[torch.Tensor], metric: Metric = "ours"
) -> torch.Tensor:
    """Distance between two gradient lists (same parameters, same order); DC's ``match_loss``."""
    if len(grads_a) != len(grads_b):
        raise ValueError(f"gradient lists differ in length: {len(grads_a)} vs {len(grads_b)}")
    if not grads_a:
        raise ValueError("gradient lists are empty")
    if metric == "ours":
        return torch.stack(
            [layer_distance(a, b) for a, b in zip(grads_a, grads_b, strict=True)]
        ).sum()
    if metric == "mse":
        return torch.stack(
            [((a - b) ** 2).sum() for a, b in zip(grads_a, grads_b, strict=True)]
        ).sum()
    if metric == "cos":
        flat_a = torch.cat([g.reshape(-1) for g in grads_a])
        flat_b = torch.cat([g.reshape(-1) for g in grads_b])
        return 1 - (flat_a * flat_b).sum() / (flat_a.norm() * flat_b.norm() + _EPS)
    raise ValueError(f"unknown gradient distance {metric!r}; allowed: 'ours', 'mse', 'cos'")


def model_gradients(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    create_graph: bool = False,
) -> list[torch.Tensor]:
    """∇θ CE(model(images), labels) for every trainable parameter, in ``parameters()`` order.

    With ``create_graph=True`` the gradients stay differentiable with respect to the images
    (the synthetic side of gradient matching); otherwise they are detached (the real side).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters to take gradients of")
    loss = F.cross_entropy(model(images), labels)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]
