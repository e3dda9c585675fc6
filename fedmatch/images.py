"""Image grids as PNG files, so that users can look at what was distilled or generated."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image

__all__ = ["save_class_grid"]


def save_class_grid(
    images: torch.Tensor, labels: torch.Tensor, path: Path, *, per_class: int = 10
) -> Path:
    """One row per class (ascending), up to ``per_class`` images each, to ``path`` (PNG).

    Images are on fedmatch's [-1, 1] scale and are clamped to it (distilled pixels can leave
    it).  The parent folder is created; the file is written to a temporary name and renamed,
    so an interrupted save never leaves a truncated PNG.
    """
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ValueError(
            f"need images (N, C, H, W) and labels (N,), got {tuple(images.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if images.shape[0] == 0:
        raise ValueError("no images to save")
    images = images.detach().cpu().float()
    labels = labels.detach().cpu()
    classes = sorted(int(c) for c in torch.unique(labels))
    columns = min(per_class, max(int((labels == c).sum()) for c in classes))
    blank = torch.full_like(images[0], -1.0)
    tiles = []
    for c in classes:
        row = list(images[labels == c][:columns])
        tiles.extend(row + [blank] * (columns - len(row)))
    grid = make_grid(torch.stack(tiles).clamp(-1, 1).add(1).div(2), nrow=columns, padding=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    save_image(grid, partial, format="png")
    partial.replace(path)
    return path
