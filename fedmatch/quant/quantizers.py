"""Fake quantizers: uniform (per-tensor, per-channel, per-group, per-timestep) and log2.

Fake quantization keeps float tensors but rounds them to the grid an integer kernel would see
(Jacob et al., CVPR 2018, Eq. 1 and §2.1): with a b-bit asymmetric grid of step ``s`` and zero
point ``z`` (an integer),

    q(x) = s · (clamp(round(x / s) + z, 0, 2^b − 1) − z),                          (1)

so for every x inside the calibrated range [lo, hi] the error is |q(x) − x| ≤ s / 2 with
s = (hi − lo) / (2^b − 1) (the zero point shifts the grid so that 0 is exact).  Symmetric
weight grids use z = 0 and the signed range [−2^{b−1}, 2^{b−1} − 1] with s = max|w| / (2^{b−1} − 1).
Rounding uses a straight-through estimator so that step sizes (and, in
:mod:`fedmatch.quant.reconstruct`, AdaRound's soft rounding) can be learned.

The log2 quantizer is DGQ's ``T2ILogQuantizer`` for softmax probabilities p ∈ (0, 1]
(Ryu et al., ICLR 2025; ``../shared/notes/diffusion.md`` §C): with the dynamic scale m (the
max of p, computed at inference: DGQ's ``t2i_real_time``),

    q(p) = m · 2^{−e},   e = clamp(round(−log2(p / m)), 0, 2^b − 2),
    q(p) = 0             for p < m · 2^{−(2^b − 1.5)},

so every kept level is an exact power of two times m with |log2(q(p) / p)| ≤ 1/2 (a relative
error of at most a factor √2), and only the tiny probabilities are flushed.  The b bits give
2^b codes: 2^b − 1 exponents and one code for zero (DGQ clamps to 2^b exponents without a zero;
with 8 bits the difference is 2^{−254} vs 2^{−255}).
"""

from __future__ import annotations

import torch
from torch import nn


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) forward, identity backward (straight-through estimator)."""
    return (x.round() - x).detach() + x


def uniform_params(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step ``s`` and integer zero point ``z`` of Eq. (1) for the range [lo, hi] (broadcast)."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = torch.maximum(lo.abs(), hi.abs()).clamp_min(1e-8) / qmax
        return scale, torch.zeros_like(scale)
    lo = torch.minimum(lo, torch.zeros_like(lo))  # 0 must be on the grid (padding, ReLU/SiLU)
    hi = torch.maximum(hi, torch.zeros_like(hi))
    scale = (hi - lo).clamp_min(1e-8) / (2**bits - 1)
    zero = (-lo / scale).round()
    return scale, zero


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Eq. (1) with a straight-through round; ``scale``/``zero`` broadcast against ``x``."""
    if symmetric:
        qmin, qmax = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        qmin, qmax = 0, 2**bits - 1
    q = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


class WeightQuantizer(nn.Module):
    """Per-output-channel symmetric weight quantizer, min-max initialised.

    ``init="mse"`` searches, per channel, the clipping ratio in [0.5, 1] of max|w| that
    minimises ||q(w) − w||² (the MSE initialisation EDA-DM and DGQ start from).
    """

    def __init__(self, weight: torch.Tensor, bits: int, init: str = "minmax") -> None:
        super().__init__()
        if init not in ("minmax", "mse"):
            raise ValueError(f"weight quantizer init={init!r}: allowed 'minmax', 'mse'")
        self.bits = bits
        flat = weight.detach().flatten(1)
        amax = flat.abs().amax(dim=1)
        if init == "mse":
            best_err = torch.full_like(amax, float("inf"))
            best = amax.clone()
            for ratio in torch.linspace(0.5, 1.0, 21):
                clip = amax * ratio
                scale, zero = uniform_params(-clip, clip, bits, symmetric=True)
                err = fake_quant(flat, scale[:, None], zero[:, None], bits, True) - flat
                err = err.pow(2).sum(dim=1)
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best = torch.where(better, clip, best)
            amax = best
        scale, _ = uniform_params(-amax, amax, bits, symmetric=True)
        shape = (-1,) + (1,) * (weight.dim() - 1)
        self.scale = nn.Parameter(scale.view(shape), requires_grad=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quant(w, self.scale, torch.zeros_like(self.scale), self.bits, True)

    def integer_weight(self, w: torch.Tensor) -> torch.Tensor:
        """The signed integers the kernel would store (for size accounting and int8 kernels)."""
        qmax = 2 ** (self.bits - 1) - 1
        return torch.clamp((w / self.scale).round(), -qmax - 1, qmax).to(torch.int8)


class RangeObserver:
    """Running min/max of a tensor, reduced over every axis except ``keep`` (mergeable)."""

    def __init__(self, keep: int | None = None) -> None:
        self.keep = keep
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if self.keep is None:
            lo, hi = x.amin(), x.amax()
        else:
            moved = x.movedim(self.keep, 0).flatten(1)
            lo, hi = moved.amin(dim=1), moved.amax(dim=1)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)


class ActQuantizer(nn.Module):
    """Asymmetric per-tensor activation quantizer with one range per timestep bucket.

    Time-aware scales (TFMQ-DM's idea, as DGQ runs it, ``act_{t}``): the activation range of a
    diffusion UNet drifts with t, so calibration keeps a range per sampling step and
    :func:`fedmatch.quant.qmodules.set_timestep` selects it.  ``per_timestep=False`` shares one
    range across all steps (EDA-DM's choice).  Until calibrated (``calibrating=True``) it only
    observes and passes its input through.
    """

    def __init__(self, bits: int, per_timestep: bool = True) -> None:
        super().__init__()
        self.bits = bits
        self.per_timestep = per_timestep
        self.calibrating = False
        self.enabled = True
        self.timestep: int = -1
        self.observers: dict[int, RangeObserver] = {}
        self.ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.learned_scale: nn.Parameter | None = None  # set by block reconstruction (LSQ)

    def _key(self) -> int:
        return self.timestep if self.per_timestep else -1

    def observe(self, x: torch.Tensor) -> None:
        self.observers.setdefault(self._key(), RangeObserver()).observe(x)

    def freeze(self) -> None:
        """Ranges from the observers (or from :meth:`load_ranges`)."""
        for key, obs in self.observers.items():
            self.ranges[key] = (obs.lo, obs.hi)
        self.calibrating = False

    def load_ranges(self, ranges: dict[int, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.ranges = {int(k): (lo.clone(), hi.clone()) for k, (lo, hi) in ranges.items()}

    def current_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key()
        if key in self.ranges:
            return self.ranges[key]
        if not self.ranges:
            raise RuntimeError("activation quantizer used before calibration")
        # a timestep never seen in calibration: the nearest calibrated one
        nearest = min(self.ranges, key=lambda k: abs(k - key))
        return self.ranges[nearest]

    def params(self) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.current_range()
        scale, zero = uniform_params(lo, hi, self.bits, symmetric=False)
        if self.learned_scale is not None:
            scale = scale * self.learned_scale
        return scale, zero

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        scale, zero = self.params()
        return fake_quant(x, scale, zero, self.bits, symmetric=False)


class LogQuantizer(nn.Module):
    """log2 quantizer of attention probabilities with a dynamic (per-input) max (DGQ §C).

    ``per_sample=False``: m = the max over the whole tensor (DGQ's ``t2i_real_time``, shared by
    a batch); ``True``: one m per sample (the leading axis), see
    :class:`fedmatch.quant.attention.QuantCrossAttnProcessor`.  Needs no calibration.
    """

    def __init__(self, bits: int, per_sample: bool = False) -> None:
        super().__init__()
        self.bits = bits
        self.per_sample = per_sample
        self.enabled = True

    def scale(self, p: torch.Tensor) -> torch.Tensor:
        """The dynamic max m (broadcast against ``p``)."""
        p = p.detach()
        m = p.flatten(1).amax(dim=1).view(-1, *[1] * (p.dim() - 1)) if self.per_sample else p.amax()
        return m.clamp_min(1e-12)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return p
        m = self.scale(p)
        top = 2**self.bits - 2  # the largest exponent; the last code is zero
        exponent = torch.clamp(round_ste(-torch.log2((p / m).clamp_min(1e-30))), 0, top)
        q = m * torch.pow(2.0, -exponent)
        # below half a level (in log2) under the smallest power of two: the zero code
        return torch.where(p < m * 2.0 ** (-top - 0.5), torch.zeros_like(p), q)
