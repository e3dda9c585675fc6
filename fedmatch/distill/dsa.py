"""Differentiable Siamese Augmentation (DSA).

Zhao & Bilen, "Dataset Condensation with Differentiable Siamese Augmentation", ICML 2021
(https://github.com/VICO-UoE/DatasetCondensation ``utils.py``: ``ParamDiffAug``,
``DiffAugment``).  Every transform is a differentiable function of the pixels (affine
``affine_grid``/``grid_sample`` for scale and rotate, index gathers for crop, a constant mask for
cutout, arithmetic for colour), so a loss on augmented synthetic images back-propagates to the
synthetic pixels.

"Siamese" means one *sampled* parameter set is applied to the real and the synthetic batch
alike (Sec. 3.2 of the paper: the same transformation A_ω with the same ω on both sides).  Here
that is explicit: :func:`sample_dsa` draws a :class:`DSAParams` once from a ``torch.Generator``
(never the clock, unlike the reference code, which seeds from ``time.time()``), and the same
object is applied to as many batches as needed.

Semantics of the reference code kept here:

- mode "S" (the DM/DSA default): each call picks ONE transform group at random out of the
  strategy string (``color`` = brightness → saturation → contrast; ``crop``; ``cutout``;
  ``flip``; ``scale``; ``rotate``) and applies only that group;
- magnitudes of ``ParamDiffAug``: scale ×[1/1.2, 1.2] per axis, rotate ±15°, crop shift up to
  12.5 % of the side (zero fill), cutout a 50 % × 50 % square, flip p = 0.5, brightness
  ±0.5, saturation ×[0, 2], contrast ×[0.5, 1.5];
- ``batch_size=1`` gives one parameter for the whole batch (the reference code's seeded
  "batch mode", used for matching); ``batch_size=len(x)`` gives one parameter per sample (its
  unseeded mode, used when training on a synthetic set).

Digits must not be flipped (a mirrored 2 is not a 2), so :data:`DIGIT_STRATEGY` leaves ``flip``
out, as the DM readme advises for MNIST and SVHN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

__all__ = [
    "DIGIT_STRATEGY",
    "TRANSFORM_GROUPS",
    "DSAConfig",
    "DSAParams",
    "parse_strategy",
    "sample_dsa",
]

TRANSFORM_GROUPS: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
# DM's ``color_crop_cutout_flip_scale_rotate`` without ``flip`` (digits are not symmetric).
DIGIT_STRATEGY = "color_crop_cutout_scale_rotate"


@dataclass(frozen=True)
class DSAConfig:
    """Magnitudes of ``ParamDiffAug`` in the DC/DSA/DM code."""

    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5
    prob_flip: float = 0.5
    brightness: float = 1.0  # x + (u - 0.5) * brightness, u ~ U(0, 1)
    saturation: float = 2.0  # chroma scaled by u * saturation
    contrast: float = 0.5  # deviation from the mean scaled by u + contrast


def parse_strategy(strategy: str) -> tuple[str, ...]:
    """Transform groups of a strategy string such as ``"color_crop_cutout"`` (``"none"``: none)."""
    if strategy.strip().lower() in ("", "none"):
        return ()
    groups = tuple(strategy.split("_"))
    bad = [g for g in groups if g not in TRANSFORM_GROUPS]
    if bad:
        raise ValueError(
            f"DSA strategy {strategy!r}: unknown transform(s) {', '.join(map(repr, bad))}; "
            f"use 'none' or '_'-joined names from {', '.join(TRANSFORM_GROUPS)}"
        )
    if len(set(groups)) != len(groups):
        raise ValueError(f"DSA strategy {strategy!r} names a transform more than once")
    return groups


@dataclass(frozen=True)
class DSAParams:
    """One sampled augmentation: the transform group and its parameters (CPU tensors).

    Calling it applies the augmentation; apply the same object to the real and the synthetic
    batch for siamese augmentation.  ``size`` is 1 (one parameter broadcast over any batch) or
    the batch size it was drawn for (one parameter per sample).
    """

    transform: str  # one of TRANSFORM_GROUPS, or "none"
    size: int
    image_size: tuple[int, int]
    values: Mapping[str, torch.Tensor] = field(default_factory=dict)
    config: DSAConfig = field(default_factory=DSAConfig)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.transform == "none":
            return x
        if x.dim() != 4 or tuple(x.shape[2:]) != self.image_size:
            raise ValueError(
                f"DSA parameters were drawn for images of size {self.image_size}, "
                f"got a batch of shape {tuple(x.shape)}"
            )
        if self.size not in (1, x.shape[0]):
            raise ValueError(
                f"DSA parameters were drawn for {self.size} samples; they apply to batches of "
                f"that size or, drawn with batch_size=1, to any batch (got {x.shape[0]})"
            )
        v = {name: t.to(x.device) for name, t in self.values.items()}
        return _APPLY[self.transform](x, v, self.config).contiguous()


def sample_dsa(
    strategy: str,
    generator: torch.Generator,
    *,
    batch_size: int = 1,
    image_size: tuple[int, int] = (28, 28),
    config: DSAConfig | None = None,
) -> DSAParams:
    """Draw one augmentation (mode "S": one transform group) from ``generator``."""
    config = config or DSAConfig()
    groups = parse_strategy(strategy)
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if not groups:
        return DSAParams("none", batch_size, image_size, {}, config)
    group = groups[int(torch.randint(len(groups), (1,), generator=generator))]
    n, (height, width) = batch_size, image_size

    def uniform() -> torch.Tensor:
        return torch.rand(n, generator=generator)

    values: dict[str, torch.Tensor]
    if group == "color":
        values = {"brightness": uniform(), "saturation": uniform(), "contrast": uniform()}
    elif group == "crop":
        shift_h = int(height * config.ratio_crop_pad + 0.5)
        shift_w = int(width * config.ratio_crop_pad + 0.5)
        values = {
            "shift_h": torch.randint(-shift_h, shift_h + 1, (n,), generator=generator),
            "shift_w": torch.randint(-shift_w, shift_w + 1, (n,), generator=generator),
        }
    elif group == "cutout":
        size_h = int(height * config.ratio_cutout + 0.5)
        size_w = int(width * config.ratio_cutout + 0.5)
        values = {
            # The reference code's offset range: an even-sized square may hang off either edge.
            "offset_h": torch.randint(0, height + (1 - size_h % 2), (n,), generator=generator),
            "offset_w": torch.randint(0, width + (1 - size_w % 2), (n,), generator=generator),
        }
    elif group == "flip":
        values = {"flip": uniform() < config.prob_flip}
    elif group == "scale":
        low, high = 1.0 / config.ratio_scale, config.ratio_scale
        values = {"sx": uniform() * (high - low) + low, "sy": uniform() * (high - low) + low}
    else:  # rotate
        values = {"angle": (uniform() - 0.5) * 2 * config.ratio_rotate / 180 * math.pi}
    return DSAParams(group, n, image_size, values, config)


# ----------------------------------------------------------------------------- transforms


def _per_sample(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(n,) -> (N, 1, 1, 1), broadcasting a batch-wide parameter to every sample."""
    return t.to(x.dtype).view(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)


def _color(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    x = x + (_per_sample(v["brightness"], x) - 0.5) * c.brightness
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * (_per_sample(v["saturation"], x) * c.saturation) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_per_sample(v["contrast"], x) + c.contrast) + mean


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    theta = theta.to(x.dtype).expand(x.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def _scale(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    zero = torch.zeros_like(v["sx"])
    theta = torch.stack(
        [torch.stack([v["sx"], zero, zero], 1), torch.stack([zero, v["sy"], zero], 1)], 1
    )
    return _affine(x, theta)


def _rotate(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    a = v["angle"]
    zero = torch.zeros_like(a)
    theta = torch.stack(
        [
            torch.stack([torch.cos(a), torch.sin(-a), zero], 1),
            torch.stack([torch.sin(a), torch.cos(a), zero], 1),
        ],
        1,
    )
    return _affine(x, theta)


def _crop(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    # Translate by (shift_h, shift_w) with zero fill: as in the reference code, pad by one pixel
    # and clamp indices into the padded image so every out-of-range read hits the zero border.
    n, _, height, width = x.shape
    shift_h = v["shift_h"].view(-1, 1).expand(n, 1)
    shift_w = v["shift_w"].view(-1, 1).expand(n, 1)
    rows = (torch.arange(height, device=x.device) + shift_h + 1).clamp(0, height + 1)
    cols = (torch.arange(width, device=x.device) + shift_w + 1).clamp(0, width + 1)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    padded = F.pad(x, [1, 1, 1, 1])
    # Advanced indices around a slice put the indexed dimensions first: (N, H, W, C).
    out = padded[batch, :, rows.view(n, height, 1), cols.view(n, 1, width)]
    return out.permute(0, 3, 1, 2)


def _cutout(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    n, _, height, width = x.shape
    size_h = int(height * c.ratio_cutout + 0.5)
    size_w = int(width * c.ratio_cutout + 0.5)
    top = (v["offset_h"] - size_h // 2).view(-1, 1, 1)
    left = (v["offset_w"] - size_w // 2).view(-1, 1, 1)
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    inside = (rows >= top) & (rows < top + size_h) & (cols >= left) & (cols < left + size_w)
    mask = (~inside).to(x.dtype).expand(n, height, width)
    return x * mask.unsqueeze(1)


def _flip(x: torch.Tensor, v: Mapping[str, torch.Tensor], c: DSAConfig) -> torch.Tensor:
    flip = v["flip"].view(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


_APPLY = {
    "color": _color,
    "crop": _crop,
    "cutout": _cutout,
    "flip": _flip,
    "scale": _scale,
    "rotate": _rotate,
}
