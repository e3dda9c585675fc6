"""The in-memory form every data source is converted to."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SHAPE = (3, 28, 28)
NUM_CLASSES = 10


@dataclass(frozen=True)
class DomainArrays:
    """One digit domain: uint8 images of shape (N, 3, 28, 28) and int64 labels 0..9."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if x.dtype != np.uint8 or x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
                raise ValueError(
                    f"domain {self.name!r}: x_{split} must be uint8 of shape (N, 3, 28, 28), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != np.int64 or y.shape != (x.shape[0],):
                raise ValueError(
                    f"domain {self.name!r}: y_{split} must be int64 of shape ({x.shape[0]},), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )
            if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
                raise ValueError(f"domain {self.name!r}: y_{split} labels must lie in 0..9")
