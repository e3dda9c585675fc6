"""Multi-formation: one stored synthetic image holds factor² smaller images.

Kim et al., "Dataset Condensation via Efficient Synthetic-Data Parameterization" (IDC, ICML
2022, Sec. 3.1; https://github.com/snu-mllab/Efficient-Dataset-Condensation), the
parameterisation NCFM distils with (its configs' ``factor: 2``, the paper's ρ = 2, Sec. 4.1).
A stored H×W image is cut into a factor × factor grid of (H/f)×(W/f) blocks and each block is
upsampled back to H×W (bilinear, IDC's ``decode_zoom``), so IPC stored images per class train
a model as IPC·f² images at the same pixel budget.  Matching differentiates through the decode,
and the set a model trains on is the decoded one.

The ``mix`` initialisation (IDC's default for factor > 1) tiles f² real images of the class,
each downsampled to (H/f)×(W/f), into every stored image: :func:`encode`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from fedmatch.distill.common import InitMode, init_synthetic

__all__ = ["check_factor", "decode", "decode_images", "decode_labels", "encode", "init_stored"]


def check_factor(factor: int, image_size: tuple[int, int]) -> None:
    """A clear error for a factor that is not a positive divisor of the image size."""
    height, width = image_size
    if factor < 1:
        raise ValueError(f"factor (multi-formation) must be at least 1, got {factor}")
    if height % factor or width % factor:
        allowed = [f for f in range(1, min(height, width) + 1) if not height % f and not width % f]
        raise ValueError(
            f"factor (multi-formation) = {factor} must divide the image size {height}x{width}; "
            f"allowed: {allowed}"
        )


def decode_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, C, H, W) stored images → (N·f², C, H, W) decoded images, differentiably.

    The f² images decoded from stored image n are rows n·f² … (n+1)·f² − 1 (row-major over the
    grid), so a class-major stored set decodes to a class-major set.
    """
    if factor == 1:
        return images
    n, c, height, width = images.shape
    check_factor(factor, (height, width))
    bh, bw = height // factor, width // factor
    # (N, C, f, bh, f, bw) → (N, f, f, C, bh, bw): block (i, j) of image n is row n·f² + i·f + j.
    blocks = images.reshape(n, c, factor, bh, factor, bw).permute(0, 2, 4, 1, 3, 5)
    blocks = blocks.reshape(n * factor * factor, c, bh, bw)
    return F.interpolate(blocks, size=(height, width), mode="bilinear", align_corners=False)


def decode_labels(labels: torch.Tensor, factor: int) -> torch.Tensor:
    """The labels of :func:`decode_images`' rows: each stored label f² times."""
    return labels.repeat_interleave(factor * factor) if factor > 1 else labels


def decode(
    images: torch.Tensor, labels: torch.Tensor, factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored set → the decoded set a model trains on (images and labels)."""
    return decode_images(images, factor), decode_labels(labels, factor)


def encode(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N·f², C, H, W) images → (N, C, H, W): groups of f² consecutive images, each
    downsampled by f (area averaging), tiled row-major into one image (IDC's ``mix`` init)."""
    if factor == 1:
        return images
    total, c, height, width = images.shape
    check_factor(factor, (height, width))
    if total % (factor * factor):
        raise ValueError(
            f"encode needs a multiple of factor² = {factor * factor} images, got {total}"
        )
    n, bh, bw = total // (factor * factor), height // factor, width // factor
    small = F.interpolate(images, size=(bh, bw), mode="area")
    grid = small.reshape(n, factor, factor, c, bh, bw).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(n, c, height, width)


def init_stored(
    images: torch.Tensor,
    labels: torch.Tensor,
    classes: list[int],
    ipc: int,
    init: InitMode,
    generator: torch.Generator,
    factor: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``ipc`` stored images per class (class-major).  With ``init='real'`` and factor > 1,
    each one tiles f² downsampled real images of its class (IDC's ``mix``); noise and stats
    initialise the stored images directly."""
    check_factor(factor, (images.shape[2], images.shape[3]))
    if factor == 1 or init != "real":
        return init_synthetic(images, labels, classes, ipc, init, generator)
    reals, _ = init_synthetic(images, labels, classes, ipc * factor * factor, init, generator)
    stored = encode(reals, factor)
    return stored, torch.tensor(classes, dtype=torch.long).repeat_interleave(ipc)
