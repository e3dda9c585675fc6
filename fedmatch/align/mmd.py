"""Multi-kernel maximum mean discrepancy (MK-MMD) between two feature samples.

The squared MMD of a characteristic kernel ``k`` is the squared RKHS distance between
the mean embeddings of the two distributions (Gretton et al., "A Kernel Two-Sample Test",
JMLR 13, 2012, Lemma 6)::

    MMD²(p, q) = E k(x, x') − 2 E k(x, y) + E k(y, y').

DAN (Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation
Networks", ICML 2015, Sec. 3.1) uses a multi-kernel ``k = Σ_u β_u k_u`` of Gaussian kernels
``k_u(x, y) = exp(−‖x − y‖² / γ_u)``; FedKA (Sun, Chong & Ochiai, ACML 2022) matches client
features to target features with five such kernels, each bandwidth a multiple of the mean
pairwise squared distance of the pooled batch, and equal weights ``β_u = 1``.  Equal weights
of one are ``U`` times DAN's convex combination (``Σ β_u = 1``); the factor is absorbed by the
loss weight (run-config key ``mmd-weight``).

Estimators (both exact formulas, no sub-sampling), for samples X (m points) and Y (n points):

- ``biased`` (default): the V-statistic, the square of Gretton et al.'s biased ``MMD_b``,
  ``1/m² Σ_ij k(x_i, x_j) − 2/(mn) Σ_ij k(x_i, y_j) + 1/n² Σ_ij k(y_i, y_j)``.  It equals
  ``‖μ̂_X − μ̂_Y‖²`` in the RKHS, so it is never negative and is exactly zero when the two
  samples coincide, which makes it a well-behaved loss on small batches; it is also what the
  official FedKA code computes (``mean(XX + YY − XY − YX)``).  It differs from the
  unbiased form only by the diagonal terms ``k(x_i, x_i) = U`` (constants, no gradient) and
  a factor (m−1)/m, resp. (n−1)/n, on the within-sample terms.
- ``unbiased``: the U-statistic ``MMD²_u`` of Gretton et al. (Lemma 6), which drops the
  diagonal terms.  It can be negative and is not zero for identical samples.

Bandwidths are computed from the pooled sample with gradients stopped (a heuristic, not a
parameter to optimise), as in the FedKA and DAN code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch

__all__ = ["DEFAULT_MULTIPLIERS", "gaussian_bandwidths", "mk_mmd", "parse_multipliers"]

# FedKA's code: base / 2^(5 // 2) · 2^u for u = 0..4, i.e. the base times 1/4 .. 4.
DEFAULT_MULTIPLIERS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)

BandwidthBase = Literal["mean", "median"]
Estimator = Literal["biased", "unbiased"]


def parse_multipliers(text: str) -> tuple[float, ...]:
    """``"0.25,0.5,1"`` -> ``(0.25, 0.5, 1.0)``; raises ``ValueError`` naming the bad part."""
    parts = [part.strip() for part in text.split(",")]
    values = []
    for part in parts:
        try:
            value = float(part)
        except ValueError:
            raise ValueError(
                f"{part!r} is not a number: use a comma-separated list of positive numbers"
            ) from None
        if not 0 < value < math.inf:
            raise ValueError(
                f"{part!r} is not a finite positive number: every bandwidth multiplier must be "
                "> 0 and finite"
            )
        values.append(value)
    return tuple(values)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # Explicit differences instead of the ‖a‖² + ‖b‖² − 2ab expansion: the expansion can
    # go slightly negative through cancellation, and these batches are small.
    return (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(dim=2)


def gaussian_bandwidths(
    pooled_sq_dist: torch.Tensor,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    base: BandwidthBase = "mean",
) -> torch.Tensor:
    """Bandwidths ``γ_u = c_u · h``; ``h`` is the mean or median off-diagonal squared distance.

    ``pooled_sq_dist`` is the (N, N) matrix of squared distances of the pooled sample.  The
    median of squared distances is the square of the (lower) median distance, i.e. the
    classic median heuristic expressed in ``γ = σ²`` units.
    """
    n = pooled_sq_dist.shape[0]
    if n < 2:
        raise ValueError(f"bandwidths need at least 2 pooled points, got {n}")
    off_diagonal = pooled_sq_dist.detach()[
        ~torch.eye(n, dtype=torch.bool, device=pooled_sq_dist.device)
    ]
    if base == "mean":
        h = off_diagonal.mean()
    elif base == "median":
        h = off_diagonal.median()
    else:
        raise ValueError(f"bandwidth base {base!r} is not allowed: use 'mean' or 'median'")
    # All points identical: every kernel is 1 whatever the bandwidth; avoid 0/0.
    h = h.clamp_min(torch.finfo(h.dtype).tiny)
    return h * torch.as_tensor(multipliers, dtype=h.dtype, device=h.device)


def mk_mmd(
    f_src: torch.Tensor,
    f_tgt: torch.Tensor,
    *,
    multipliers: Sequence[float] = DEFAULT_MULTIPLIERS,
    bandwidth_base: BandwidthBase = "mean",
    estimator: Estimator = "biased",
) -> torch.Tensor:
    """Squared MK-MMD between feature batches ``f_src`` (m, d) and ``f_tgt`` (n, d).

    Kernel ``k = Σ_u exp(−‖x − y‖² / γ_u)`` over ``γ_u = multipliers[u] · h`` (see
    ``gaussian_bandwidths``); ``estimator`` is ``"biased"`` (V-statistic, default) or
    ``"unbiased"`` (U-statistic).  Differentiable in both inputs; returns a 0-d tensor.
    """
    if f_src.ndim != 2 or f_tgt.ndim != 2 or f_src.shape[1] != f_tgt.shape[1]:
        raise ValueError(
            "mk_mmd needs two 2-d feature batches with the same feature size, got "
            f"{tuple(f_src.shape)} and {tuple(f_tgt.shape)}"
        )
    if not multipliers:
        raise ValueError("mk_mmd needs at least one kernel (multipliers is empty)")
    m, n = f_src.shape[0], f_tgt.shape[0]
    minimum = 2 if estimator == "unbiased" else 1
    if m < minimum or n < minimum:
        raise ValueError(
            f"the {estimator} MK-MMD needs at least {minimum} point(s) per sample, got {m} and {n}"
        )
    pooled = torch.cat([f_src, f_tgt], dim=0)
    sq_dist = _squared_distances(pooled, pooled)
    gammas = gaussian_bandwidths(sq_dist, multipliers, bandwidth_base)
    kernel = torch.exp(-sq_dist.unsqueeze(0) / gammas.view(-1, 1, 1)).sum(dim=0)
    k_xx, k_yy, k_xy = kernel[:m, :m], kernel[m:, m:], kernel[:m, m:]
    if estimator == "biased":
        return k_xx.mean() + k_yy.mean() - 2 * k_xy.mean()
    if estimator == "unbiased":
        xx = (k_xx.sum() - k_xx.diagonal().sum()) / (m * (m - 1))
        yy = (k_yy.sum() - k_yy.diagonal().sum()) / (n * (n - 1))
        return xx + yy - 2 * k_xy.mean()
    raise ValueError(f"estimator {estimator!r} is not allowed: use 'biased' or 'unbiased'")
