"""Distilled sets of ``distill_time_to_accuracy.py`` on disk, to score again later.

One safetensors file per (seed, method, iteration): ``images`` (float32, N x 1 x 28 x 28) and
``labels`` (int64, N), N = 10 * IPC, each class IPC times.  The shared start of a seed is saved
once as method ``start``, iteration 0.  Files are read back as untrusted: safetensors only (no
pickle), every tensor's name, dtype, shape and values checked, an error naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

START = "start"
_NAME = "seed{seed}_{method}_it{iteration}.safetensors"


def set_path(folder: str | Path, seed: int, method: str, iteration: int) -> Path:
    """Where the set of ``method`` at ``iteration`` of ``seed`` lives (the start: iteration 0)."""
    if iteration == 0:
        method = START
    if not method or any(c in method for c in "/\\\0") or method.startswith("."):
        raise ValueError(f"method name {method!r}: not usable in a file name")
    return Path(folder) / _NAME.format(seed=seed, method=method, iteration=iteration)


def save_set(path: Path, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Write atomically: a crash leaves the old file or none, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tensors = {
        "images": images.detach().cpu().float().contiguous(),
        "labels": labels.detach().cpu().long().contiguous(),
    }
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def load_set(path: Path, ipc: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of a saved set of ``ipc`` images per class, every field checked."""
    if not path.is_file():
        raise FileNotFoundError(f"distilled set {path}: no such file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"distilled set {path}: not a safetensors file ({error})") from None
    if set(tensors) != {"images", "labels"}:
        raise ValueError(
            f"distilled set {path}: tensors {sorted(tensors)}; allowed exactly images, labels"
        )
    images, labels = tensors["images"], tensors["labels"]
    n = 10 * ipc
    if images.dtype != torch.float32 or tuple(images.shape) != (n, 1, 28, 28):
        raise ValueError(
            f"distilled set {path}: images {images.dtype} {tuple(images.shape)}; "
            f"allowed float32 ({n}, 1, 28, 28) for IPC {ipc}"
        )
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"distilled set {path}: images hold NaN or infinite values")
    if labels.dtype != torch.int64 or tuple(labels.shape) != (n,):
        raise ValueError(
            f"distilled set {path}: labels {labels.dtype} {tuple(labels.shape)}; "
            f"allowed int64 ({n},)"
        )
    counts = torch.bincount(labels.clamp(-1, 10) + 1, minlength=12)[1:11]
    if labels.min() < 0 or labels.max() > 9 or bool((counts != ipc).any()):
        raise ValueError(
            f"distilled set {path}: labels must be the classes 0..9, {ipc} images each; "
            f"got counts {counts.tolist()} and range {int(labels.min())}..{int(labels.max())}"
        )
    return images, labels
