"""DGQ's distribution-aware group quantization of activations (Ryu et al., ICLR 2025).

As DGQ's code runs it (``../shared/notes/diffusion.md`` §C, ``done_group_num``):

1. for each layer input, the extreme min and max are collected over the calibration batches
   along two candidate axes: **channels** and **pixels** (spatial positions; tokens for a
   linear layer on (B, tokens, C));
2. the axis whose per-index ranges spread more, (max of maxima − min of maxima) + (max of
   minima − min of minima), is the one whose outliers are grouped: pixel-wise outliers when
   the spread is over positions, channel-wise when it is over channels;
3. k-means with k = ``groups`` on the per-index points [min, max] forms the groups, and each
   group gets its own asymmetric scale from its members' min / max, so an outlier channel or
   pixel lands in a group with its own (wide) range and the others keep a fine grid.

Deviation: DGQ groups the rows of the unfolded (im2col) conv input; here the pixel axis is the
H×W positions of the conv input itself (the same outliers, without the 9× unfold memory).
Time-aware as in DGQ: the groups are chosen once from the ranges pooled over timesteps, and
each group keeps one range per timestep.  2-D inputs (the time embedding MLP) are not grouped.
Every statistic is a per-index min/max, so clients' statistics merge by element-wise min/max
(:mod:`fedmatch.quant.calibrate`).
"""

from __future__ import annotations

import torch
from torch import nn

from fedmatch.quant.quantizers import fake_quant, uniform_params

CHANNEL, PIXEL = "channel", "pixel"


def axis_view(x: torch.Tensor, axis: str) -> torch.Tensor:
    """(index, everything else): channels of (B, C, H, W) / (B, T, C), or pixels / tokens."""
    if x.dim() == 4:
        return (
            x.transpose(0, 1).flatten(1)
            if axis == CHANNEL
            else x.flatten(2).permute(2, 0, 1).flatten(1)
        )
    if x.dim() == 3:
        return x.permute(2, 0, 1).flatten(1) if axis == CHANNEL else x.transpose(0, 1).flatten(1)
    raise ValueError(f"group quantization needs a 3-D or 4-D input, got shape {tuple(x.shape)}")


def axis_spread(lo: torch.Tensor, hi: torch.Tensor) -> float:
    """DGQ's outlier score of one axis: range of the maxima + range of the minima."""
    return float((hi.max() - hi.min()) + (lo.max() - lo.min()))


def kmeans_groups(lo: torch.Tensor, hi: torch.Tensor, groups: int, iters: int = 50) -> torch.Tensor:
    """Group id per index: Lloyd's k-means on the points [min, max] (deterministic init).

    Centres start at the points ranked at evenly spaced quantiles of the range width, so an
    isolated outlier (the widest range) starts as its own centre.
    """
    points = torch.stack([lo, hi], dim=1).double()
    k = min(groups, len(points))
    order = torch.argsort(hi - lo)
    picks = torch.linspace(0, len(points) - 1, k).round().long()
    centres = points[order[picks]].clone()
    assign = torch.zeros(len(points), dtype=torch.long)
    for _ in range(iters):
        new = torch.cdist(points, centres).argmin(dim=1)
        if torch.equal(new, assign) and _ > 0:
            break
        assign = new
        for c in range(k):
            members = points[assign == c]
            if len(members):
                centres[c] = members.mean(dim=0)
    # renumber to 0..used-1
    _, assign = torch.unique(assign, return_inverse=True)
    return assign


class GroupActQuantizer(nn.Module):
    """Asymmetric activation quantizer with one scale per group of channels or pixels."""

    def __init__(self, bits: int, groups: int, per_timestep: bool = True) -> None:
        super().__init__()
        self.bits = bits
        self.groups = groups
        self.per_timestep = per_timestep
        self.calibrating = False
        self.enabled = True
        self.timestep = -1
        # stats[t][axis] = (lo, hi) per index: mergeable across batches and clients
        self.stats: dict[int, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        self.axis: str | None = None
        self.assign: torch.Tensor | None = None
        self.ranges: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # per group, per t
        self.learned_scale: nn.Parameter | None = None

    def _key(self) -> int:
        return self.timestep if self.per_timestep else -1

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        per_t = self.stats.setdefault(self._key(), {})
        for axis in (CHANNEL, PIXEL):
            v = axis_view(x, axis)
            lo, hi = v.amin(dim=1), v.amax(dim=1)
            if axis in per_t:
                lo, hi = torch.minimum(per_t[axis][0], lo), torch.maximum(per_t[axis][1], hi)
            per_t[axis] = (lo, hi)

    def freeze(self) -> None:
        """Choose the axis and the groups from the pooled stats; group ranges per timestep."""
        if not self.stats:
            raise RuntimeError("group quantizer frozen before any calibration data")
        pooled = {}
        for axis in (CHANNEL, PIXEL):
            los = torch.stack([s[axis][0] for s in self.stats.values()])
            his = torch.stack([s[axis][1] for s in self.stats.values()])
            pooled[axis] = (los.amin(dim=0), his.amax(dim=0))
        self.axis = max((CHANNEL, PIXEL), key=lambda a: axis_spread(*pooled[a]))
        self.assign = kmeans_groups(*pooled[self.axis], self.groups)
        used = int(self.assign.max()) + 1
        self.ranges = {}
        for key, s in self.stats.items():
            lo, hi = s[self.axis]
            glo = torch.full((used,), float("inf")).scatter_reduce(0, self.assign, lo, "amin")
            ghi = torch.full((used,), float("-inf")).scatter_reduce(0, self.assign, hi, "amax")
            self.ranges[key] = (glo, ghi)
        self.calibrating = False

    def current_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        key = self._key()
        if key not in self.ranges:
            if not self.ranges:
                raise RuntimeError("group quantizer used before calibration")
            key = min(self.ranges, key=lambda k: abs(k - key))
        return self.ranges[key]

    def index_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point per element's group, shaped to broadcast against ``x``."""
        glo, ghi = self.current_range()
        scale, zero = uniform_params(glo, ghi, self.bits, symmetric=False)
        if self.learned_scale is not None:
            scale = scale * self.learned_scale
        s, z = scale[self.assign], zero[self.assign]
        if x.dim() == 4:
            shape = (1, -1, 1, 1) if self.axis == CHANNEL else (1, 1, *x.shape[2:])
        else:
            shape = (1, 1, -1) if self.axis == CHANNEL else (1, -1, 1)
        return s.view(shape), z.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.calibrating:
            self.observe(x)
            return x
        if not self.enabled:
            return x
        scale, zero = self.index_params(x)
        return fake_quant(x, scale, zero, self.bits, symmetric=False)
