"""EDA-DM's calibration-sample selection (TDAC) (Liu et al., arXiv 2401.04585).

As ``scripts/calibration.py`` runs it (``../shared/notes/diffusion.md`` §D): one batch runs the
whole DDIM trajectory, and the input feature map of the mid block is kept at every step t.
Over the T steps,

    density_t   = #{j ≠ t : MSE(F_t, F_j) ≤ r}                                  (TDAC density)
    diversity_t = Σ_j mean(1 − cos(F_t, F_j))   (cosine over channels, per sample and pixel)
    w_t         = norm(density)_t + λ · norm(diversity)_t      (norm = min-max to [0, 1])

and step t receives round(N · w_t / Σ w) of the N calibration samples, taken from the stored
trajectories.  EDA-DM hard-codes r (3.0 or 0.3 by dataset); here (ours) r is the ``quantile``
of the off-diagonal pairwise MSEs, so it adapts to the feature scale.  Allocation uses largest
remainders so the counts sum to N exactly.

Federated form (ours): a client computes w_t on its own trajectories (or local features) and
sends only the T weights; the server averages them (weighted by examples) and allocates N.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fedmatch.quant.calibrate import CalibBatch


def _minmax(v: torch.Tensor) -> torch.Tensor:
    span = v.max() - v.min()
    return (v - v.min()) / span if span > 0 else torch.zeros_like(v)


def tdac_weights(
    features: Sequence[torch.Tensor], lam: float = 1.2, quantile: float = 0.2
) -> torch.Tensor:
    """w_t = norm(density_t) + λ · norm(diversity_t) for features F_t of shape (B, C, H, W)."""
    f = torch.stack([x.float() for x in features])  # (T, B, C, H, W)
    steps = f.shape[0]
    flat = f.flatten(1)
    mse = torch.cdist(flat, flat).pow(2) / flat.shape[1]
    off = ~torch.eye(steps, dtype=torch.bool)
    r = torch.quantile(mse[off], quantile)
    density = ((mse <= r) & off).sum(dim=1).float()
    unit = F.normalize(f, dim=2)  # channels
    diversity = torch.zeros(steps)
    for t in range(steps):
        cos = (unit[t : t + 1] * unit).sum(dim=2)  # (T, B, H, W)
        diversity[t] = (1 - cos).mean(dim=(1, 2, 3)).sum()
    return _minmax(density) + lam * _minmax(diversity)


def allocate(weights: torch.Tensor, total: int) -> torch.Tensor:
    """round(N · w_t / Σ w) with largest remainders, so the counts sum to ``total``."""
    w = weights.double().clamp_min(0)
    if float(w.sum()) == 0:
        w = torch.ones_like(w)
    exact = total * w / w.sum()
    counts = exact.floor().long()
    left = total - int(counts.sum())
    if left > 0:
        counts[torch.argsort(exact - counts, descending=True)[:left]] += 1
    return counts


def select_samples(
    batches: Sequence[CalibBatch], counts: torch.Tensor, generator: torch.Generator
) -> list[CalibBatch]:
    """``counts[t]`` of the stored x_t at step t (at most the batch size; empty steps dropped)."""
    out = []
    for b, n in zip(batches, counts.tolist(), strict=True):
        n = min(int(n), len(b.labels))
        if n:
            index = torch.randperm(len(b.labels), generator=generator)[:n]
            out.append(CalibBatch(b.x[index], b.t, b.labels[index]))
    return out


def uniform_counts(steps: int, total: int) -> torch.Tensor:
    """The baseline: the same number of samples at every step."""
    return allocate(torch.ones(steps), total)
