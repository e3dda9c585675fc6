"""Gradient reversal and the DANN domain loss (Ganin et al., "Domain-Adversarial Training of
Neural Networks", JMLR 17, 2016).

The gradient reversal layer (Sec. 4.2 of the JMLR paper) is the pseudo-function R_λ with
R_λ(x) = x in the forward pass and dR_λ/dx = −λI in the backward pass.  A domain classifier
on top of R_λ(features) minimises its cross-entropy while the feature extractor below
maximises it, which is DANN's saddle-point objective (source and target domain losses,
Sec. 4.2) trained with plain back-propagation.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["domain_loss", "grad_reverse"]


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # type: ignore[override]
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):  # type: ignore[override]
        return grad_output.neg() * ctx.coeff, None


def grad_reverse(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """R_λ(x): identity forward, gradient times ``−coeff`` backward."""
    return _GradReverse.apply(x, float(coeff))


def domain_loss(
    domain_logits_source: torch.Tensor, domain_logits_target: torch.Tensor
) -> torch.Tensor:
    """DANN's domain cross-entropy: source examples are domain 0, target examples domain 1.

    Summed over the two domains as in the official FedKA code (``err_s_domain +
    err_t_domain``), each term the mean over its batch.
    """
    zeros = torch.zeros(
        len(domain_logits_source), dtype=torch.long, device=domain_logits_source.device
    )
    ones = torch.ones(
        len(domain_logits_target), dtype=torch.long, device=domain_logits_target.device
    )
    return F.cross_entropy(domain_logits_source, zeros) + F.cross_entropy(
        domain_logits_target, ones
    )
