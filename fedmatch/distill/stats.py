"""Per-class, per-channel image statistics: FedLGD's initialisation of virtual images.

FedLGD (Huang et al., TMLR 2024, Sec. 3.2 "initialisation", ``--init normal`` in
``ubc-tea/FedLGD``) starts every virtual image from Gaussian noise with the per-class,
per-channel mean and standard deviation of the real data: each client from its own data (its
local virtual images), the server from the clients' statistics merged (the global virtual
images).  Only these statistics leave a client, never an image.

The server's merge here is the pooled moment of all clients' pixels,

    μ_c = Σ_k n_kc μ_kc / Σ_k n_kc,      σ²_c = Σ_k n_kc (σ²_kc + μ²_kc) / Σ_k n_kc − μ²_c,

which is exactly the statistic of the union of the clients' images (every image has the same
number of pixels).  The official code averages the clients' means and their standard
deviations instead, which ignores how many images each client holds and the spread between
the clients' means.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ClassStats", "class_channel_stats", "pool_class_stats", "sample_from_stats"]


@dataclass(frozen=True)
class ClassStats:
    """``counts`` (C,) images per class; ``mean`` and ``var`` (C, channels) over their pixels.

    Classes a client does not hold have count 0 (and mean and variance 0).  ``var`` is the
    population variance (divisor: the number of pixels), which is what pooling needs.
    """

    counts: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor

    def __post_init__(self) -> None:
        c = self.counts.shape[0]
        if self.counts.dim() != 1 or self.mean.shape != self.var.shape or self.mean.shape[0] != c:
            raise ValueError(
                f"class statistics do not fit together: counts {tuple(self.counts.shape)}, "
                f"mean {tuple(self.mean.shape)}, var {tuple(self.var.shape)}"
            )

    @property
    def std(self) -> torch.Tensor:
        return self.var.clamp(min=0).sqrt()

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {"counts": self.counts, "mean": self.mean, "var": self.var}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> ClassStats:
        missing = {"counts", "mean", "var"} - set(tensors)
        if missing:
            raise ValueError(f"class statistics lack {sorted(missing)}; got {sorted(tensors)}")
        return cls(tensors["counts"].long(), tensors["mean"].double(), tensors["var"].double())


def class_channel_stats(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> ClassStats:
    """The statistics of ``images`` (N, channels, H, W) per class and channel (float64)."""
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    x = images.detach().double().cpu()
    labels = labels.cpu().long()
    counts = torch.bincount(labels, minlength=num_classes)
    pixels = x.shape[2] * x.shape[3]
    # Per image, per channel: sum and sum of squares of the pixels, then summed per class.
    sums = x.sum(dim=(2, 3))
    squares = (x * x).sum(dim=(2, 3))
    class_sums = sums.new_zeros(num_classes, x.shape[1]).index_add(0, labels, sums)
    class_squares = squares.new_zeros(num_classes, x.shape[1]).index_add(0, labels, squares)
    n = (counts * pixels).clamp(min=1).double().unsqueeze(1)
    mean = class_sums / n
    var = (class_squares / n - mean * mean).clamp(min=0)
    return ClassStats(counts, mean, var)


def pool_class_stats(parts: Sequence[ClassStats]) -> ClassStats:
    """The statistics of the union of the parts' images (the pooled moments above)."""
    if not parts:
        raise ValueError("no class statistics to pool")
    counts = torch.stack([p.counts for p in parts]).sum(0)
    weights = torch.stack([p.counts for p in parts]).double().unsqueeze(2)  # (K, C, 1)
    means = torch.stack([p.mean for p in parts])  # (K, C, channels)
    second = torch.stack([p.var + p.mean * p.mean for p in parts])
    total = counts.clamp(min=1).double().unsqueeze(1)
    mean = (weights * means).sum(0) / total
    var = ((weights * second).sum(0) / total - mean * mean).clamp(min=0)
    return ClassStats(counts, mean, var)


def sample_from_stats(
    stats: ClassStats,
    classes: Sequence[int],
    ipc: int,
    image_size: tuple[int, int],
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` images per class in ``classes`` (class-major); pixels ~ N(μ_c, σ_c) per channel."""
    if ipc < 1:
        raise ValueError(f"ipc must be at least 1, got {ipc}")
    absent = [c for c in classes if int(stats.counts[c]) == 0]
    if absent:
        raise ValueError(f"no statistics for class(es) {absent}: no image of them was counted")
    channels = stats.mean.shape[1]
    labels = torch.tensor(list(classes), dtype=torch.long).repeat_interleave(ipc)
    noise = torch.randn((len(labels), channels, *image_size), generator=generator)
    mean = stats.mean[labels].float()[:, :, None, None]
    std = stats.std[labels].float()[:, :, None, None]
    return mean + std * noise, labels
