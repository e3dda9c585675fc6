"""Checks and conversions every real-data reader shares (``digit_five``, ``torchvision_roots``).

A reader validates what it found in a file here, so every malformed file is a ``ValueError``
that names the file and what was expected, and a missing set of files is one
``FileNotFoundError`` listing them all.  Images leave here as uint8 (N, 3, 28, 28): resized
to 28x28 (bilinear with anti-aliasing, the PIL-compatible mode FedBN's ``transforms.Resize``
uses), greyscale repeated into three channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES

__all__ = [
    "as_labels",
    "as_uint8_images",
    "check_label_range",
    "check_name",
    "require_files",
    "to_domain_images",
]

_TARGET_HW = IMAGE_SHAPE[1:]
# Bounds peak float32 memory while resizing (SVHN train is 73k images).
_RESIZE_CHUNK = 2048


def check_name(name: str, allowed: Sequence[str], layout: str) -> None:
    if name not in allowed:
        raise ValueError(f"unknown {layout} domain {name!r}; allowed: {', '.join(allowed)}")


def require_files(
    expected: Sequence[Path],
    *,
    root: Path,
    kind: str,
    what: str,
    help_text: str,
    alternatives: dict[Path, Path] | None = None,
) -> None:
    """Raise one FileNotFoundError naming every missing file, so users fix them all at once.

    ``alternatives`` maps an expected path to another path that satisfies it too.
    """
    alternatives = alternatives or {}
    missing = []
    for path in expected:
        alt = alternatives.get(path)
        if path.is_file() or (alt is not None and alt.is_file()):
            continue
        missing.append(f"  {path}" + (f"  (or {alt.name})" if alt is not None else ""))
    if not missing:
        return
    root_note = "" if root.is_dir() else f" The data-root directory {root} does not exist."
    raise FileNotFoundError(
        f"{what} not found (dataset={kind!r}, data-root={str(root)!r}).{root_note} "
        f"Missing {len(missing)} of {len(expected)} expected file(s):\n"
        + "\n".join(missing)
        + f"\n{help_text}"
    )


def as_uint8_images(images: Any, source: Path, what: str = "images") -> np.ndarray:
    """Validate channels-last images and return them as uint8 (N, H, W) or (N, H, W, 1|3)."""
    arr = np.asarray(images)
    shape_ok = arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3))
    if not shape_ok or arr.shape[1] == 0 or arr.shape[2] == 0:
        raise ValueError(
            f"{source}: {what} must have shape (N, H, W) or (N, H, W, 3), got {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{source}: contains no images")
    if arr.dtype == np.uint8:
        return arr
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{source}: {what} must be uint8 pixels 0..255, got dtype {arr.dtype}")
    if arr.min() < 0 or arr.max() > 255:
        raise ValueError(
            f"{source}: {what} must be pixels in 0..255, got range {arr.min()}..{arr.max()}"
        )
    return arr.astype(np.uint8)


def as_labels(labels: Any, n: int, source: Path) -> np.ndarray:
    """Validate int-like labels of shape (N,) or (N, 1) in 0..9 and return int64 (N,)."""
    arr = np.asarray(labels)
    if arr.shape not in ((n,), (n, 1)):
        raise ValueError(f"{source}: labels must have shape ({n},) or ({n}, 1), got {arr.shape}")
    arr = arr.reshape(n)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise ValueError(f"{source}: labels must be whole numbers, got dtype {arr.dtype}")
    elif not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {arr.dtype}")
    # Checked before the cast: int64 would wrap a huge uint64 label into a misleading -1.
    check_label_range(arr, source)
    return arr.astype(np.int64)


def check_label_range(labels: np.ndarray, source: Path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
        raise ValueError(
            f"{source}: labels must lie in 0..{NUM_CLASSES - 1}, found {bad[:10].tolist()}"
        )


def to_domain_images(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W[, C]) channels-last -> uint8 (N, 3, 28, 28).

    Resizing happens before the grey->RGB repeat so greyscale domains cost a third as much.
    """
    x = images if images.ndim == 4 else images[..., None]
    x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    if tuple(x.shape[2:]) != _TARGET_HW:
        x = np.concatenate(
            [_resize_chunk(x[i : i + _RESIZE_CHUNK]) for i in range(0, len(x), _RESIZE_CHUNK)]
        )
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    return np.ascontiguousarray(x)


def _resize_chunk(chunk: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(chunk).to(torch.float32)
    # antialias=True matches PIL's bilinear resize, which FedBN's transforms.Resize used.
    t = F.interpolate(t, size=_TARGET_HW, mode="bilinear", align_corners=False, antialias=True)
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()
