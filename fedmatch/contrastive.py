"""The supervised contrastive loss (SupCon) that VHL's feature calibration and FedLGD's
regulariser share."""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["SUPCON_TEMPERATURE", "supcon_loss"]

# Khosla et al.'s default, which VHL and FedLGD both use.
SUPCON_TEMPERATURE = 0.07


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor,
    temperature: float = SUPCON_TEMPERATURE,
    base_temperature: float = SUPCON_TEMPERATURE,
) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, L^sup_out), one view per sample.

    For each anchor i with positives P(i) (same label, i excluded) and all others A(i)::

        ℓ_i = −(τ/τ_b) · (1/|P(i)|) Σ_{p∈P(i)} log [exp(f_i·f_p/τ) / Σ_{a∈A(i)} exp(f_i·f_a/τ)]

    on L2-normalised features; anchors without positives contribute 0 (as in the reference
    code); the loss is the mean over anchors.
    """
    f = F.normalize(features, dim=1)
    logits = f @ f.T / temperature
    n = len(f)
    self_mask = torch.eye(n, dtype=torch.bool, device=f.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    count = positives.sum(1)
    summed = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    mean_log_prob = summed / count.clamp(min=1)
    return -(temperature / base_temperature) * mean_log_prob.mean()
