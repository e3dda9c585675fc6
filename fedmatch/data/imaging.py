"""Image synthesis helpers of the embedded domains: splits, warps, crops, colours, noise.

Plain numpy/torch on arrays; the domain builders in ``fedmatch/data/embedded.py`` combine them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.types import NUM_CLASSES, DomainArrays

TEST_FRACTION = 0.2
# Rendering in chunks bounds peak memory (a 56x56 RGB float chunk of 1,024 is about 40 MB).
CHUNK = 1_024


def load_photos() -> list[torch.Tensor]:
    """scikit-learn's sample photographs (a temple in China, a flower) as (3, H, W) floats."""
    from sklearn.datasets import load_sample_images

    return [
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        for image in load_sample_images().images
    ]


def chunks(n: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + CHUNK, n)) for lo in range(0, n, CHUNK)]


def balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Labels 0-9 in equal numbers (n a multiple of 10), in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)


def split(
    name: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> DomainArrays:
    """A fixed stratified split: TEST_FRACTION of every class goes to test, the rest to train."""
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * TEST_FRACTION)
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    # Shuffle across classes too, so that the first k samples of a split are still balanced.
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return DomainArrays(
        name=name,
        x_train=np.ascontiguousarray(images[train]),
        y_train=labels[train].astype(np.int64),
        x_test=np.ascontiguousarray(images[test]),
        y_test=labels[test].astype(np.int64),
    )


def affine(
    rotation: np.ndarray,
    scale_x: np.ndarray,
    scale_y: np.ndarray,
    shear: np.ndarray,
    shift: np.ndarray,
) -> np.ndarray:
    """Per-sample 3x3 matrices ``T(shift) R(rotation) Shear(shear) S(scale_x, scale_y)``.

    They act on grid_sample's normalised coordinates, where an image spans [-1, 1] on each
    axis, so a scale of 0.5 maps something as tall as its canvas to half the output height.
    """
    n = len(rotation)
    cos, sin = np.cos(rotation), np.sin(rotation)
    rotate = np.zeros((n, 3, 3))
    rotate[:, 0, 0], rotate[:, 0, 1], rotate[:, 1, 0], rotate[:, 1, 1] = cos, -sin, sin, cos
    rotate[:, :2, 2] = shift
    rotate[:, 2, 2] = 1.0
    shear_scale = np.zeros((n, 3, 3))
    shear_scale[:, 0, 0] = scale_x
    shear_scale[:, 0, 1] = shear * scale_y
    shear_scale[:, 1, 1] = scale_y
    shear_scale[:, 2, 2] = 1.0
    return rotate @ shear_scale


def homography_grid(output_to_input: np.ndarray, size: int) -> np.ndarray:
    """A grid_sample grid (N, size, size, 2) from per-sample 3x3 output->input homographies."""
    coords = (np.arange(size, dtype=np.float32) * 2 + 1) / size - 1  # pixel centres
    x, y = coords[None, None, :], coords[None, :, None]
    m = output_to_input.astype(np.float32)[:, :, :, None, None]
    grid = np.empty((len(output_to_input), size, size, 2), dtype=np.float32)
    # Row and column terms are formed on (N, 1, size) and (N, size, 1); only their sum is
    # full size, which keeps this cheap next to grid_sample itself.
    grid[..., 0] = (m[:, 0, 0] * x + m[:, 0, 2]) + m[:, 0, 1] * y
    grid[..., 1] = (m[:, 1, 0] * x + m[:, 1, 2]) + m[:, 1, 1] * y
    if np.any(output_to_input[:, 2] != (0.0, 0.0, 1.0)):
        grid /= ((m[:, 2, 0] * x + m[:, 2, 2]) + m[:, 2, 1] * y)[..., None]
    return grid


def warp_images(images: torch.Tensor, output_to_input: np.ndarray, size: int) -> np.ndarray:
    """Resample each image through its homography onto a size x size output (zeros outside)."""
    grid = torch.from_numpy(homography_grid(output_to_input, size))
    return F.grid_sample(images, grid, mode="bilinear", align_corners=False).numpy()


def box_downsample(images: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks: the supersampled rendering back down to its final size."""
    return (
        images[:, :, 0::2, 0::2]
        + images[:, :, 1::2, 0::2]
        + images[:, :, 0::2, 1::2]
        + images[:, :, 1::2, 1::2]
    ) * np.float32(0.25)


@dataclass(frozen=True)
class CropParams:
    """Where each sample's background is cut from the sample photos."""

    photo: np.ndarray  # which photo
    side: np.ndarray  # side of the square crop in photo pixels (zoom)
    position: np.ndarray  # (N, 2) crop centre as a fraction of the free range, in [0, 1]
    flip: np.ndarray  # +1 or -1: horizontal mirror
    photos: tuple[torch.Tensor, ...]

    @staticmethod
    def draw(rng: np.random.Generator, n: int, side_range: tuple[float, float]) -> CropParams:
        photos = tuple(load_photos())
        return CropParams(
            photo=rng.integers(len(photos), size=n),
            side=rng.uniform(*side_range, n),
            position=rng.random((n, 2)),
            flip=rng.choice(np.array([-1.0, 1.0]), size=n),
            photos=photos,
        )

    def slice(self, lo: int, hi: int) -> CropParams:
        return CropParams(
            self.photo[lo:hi], self.side[lo:hi], self.position[lo:hi], self.flip[lo:hi], self.photos
        )


def photo_crops(params: CropParams, size: int) -> np.ndarray:
    """Square photo crops resampled to (N, 3, size, size)."""
    n = len(params.photo)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    for index, photo in enumerate(params.photos):
        chosen = np.flatnonzero(params.photo == index)
        if chosen.size == 0:
            continue
        _, height, width = photo.shape
        side = params.side[chosen]
        # Centre in pixel units, kept far enough from the border that the crop fits.
        centre_x = side / 2 + params.position[chosen, 0] * (width - side)
        centre_y = side / 2 + params.position[chosen, 1] * (height - side)
        output_to_input = np.zeros((chosen.size, 3, 3))
        output_to_input[:, 0, 0] = params.flip[chosen] * side / width
        output_to_input[:, 0, 2] = 2 * centre_x / width - 1
        output_to_input[:, 1, 1] = side / height
        output_to_input[:, 1, 2] = 2 * centre_y / height - 1
        output_to_input[:, 2, 2] = 1.0
        grid = homography_grid(output_to_input, size).reshape(1, chosen.size * size, size, 2)
        # All crops of one photo in one call: stacking the grids vertically samples the single
        # photo for every crop without copying the photo once per sample.
        sampled = F.grid_sample(
            photo[None], torch.from_numpy(grid), mode="bilinear", align_corners=False
        )
        out[chosen] = sampled.numpy().reshape(3, chosen.size, size, size).transpose(1, 0, 2, 3)
    return out


@dataclass(frozen=True)
class GradientParams:
    """A linear brightness ramp across each image, as from uneven lighting."""

    angle: np.ndarray
    strength: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, strength: float) -> GradientParams:
        return GradientParams(
            angle=rng.uniform(0.0, 2 * math.pi, n), strength=rng.uniform(0.0, strength, n)
        )

    def slice(self, lo: int, hi: int) -> GradientParams:
        return GradientParams(self.angle[lo:hi], self.strength[lo:hi])

    def render(self, size: int) -> np.ndarray:
        """(N, 1, size, size), to be broadcast over the colour channels."""
        coords = (np.arange(size, dtype=np.float32) * 2 + 1) / size - 1
        x, y = coords[None, :], coords[:, None]
        dx = per_sample(np.cos(self.angle) * self.strength)
        dy = per_sample(np.sin(self.angle) * self.strength)
        return dx * x + dy * y


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def contrasting_colours(
    rng: np.random.Generator,
    reference: np.ndarray,
    min_delta: float,
    first: np.ndarray | None = None,
) -> np.ndarray:
    """Random RGB colours whose luminance differs from ``reference``'s by at least ``min_delta``.

    Rejection sampling that redraws only the failures, in a fixed order, so the result is a
    deterministic function of the generator state. ``first`` optionally supplies the first
    attempt, so that callers can draw most of their randomness up front.
    """
    colours = rng.random(reference.shape) if first is None else first.copy()
    target = luminance(reference)
    for _ in range(100):
        bad = np.abs(luminance(colours) - target) < min_delta
        if not bad.any():
            return colours
        colours[bad] = rng.random((int(bad.sum()), 3))
    # Only reachable when min_delta is (nearly) impossible: fall back to black or white.
    colours[bad] = np.where(target[bad, None] > 0.5, 0.0, 1.0)
    return colours


def colour(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32)[:, :, None, None]


def per_sample(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None, None]


def lerp(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return start + (end - start) * weight


def gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Separable gaussian blur with a different sigma per image (sigma 0 leaves it unchanged).

    A weighted sum of shifted copies: per-image kernels would otherwise need a grouped
    convolution, and with a handful of taps this is as fast.
    """
    radius = max(1, math.ceil(3 * float(np.max(sigma))))
    taps = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 * (taps[None, :] / np.maximum(sigma, 1e-3)[:, None]) ** 2)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    size = images.shape[-1]
    for axis in (3, 2):
        pad = [(0, 0)] * 4
        pad[axis] = (radius, radius)
        padded = np.pad(images, pad, mode="edge")
        blurred = np.zeros_like(images)
        for tap in range(len(taps)):
            window = (
                padded[:, :, :, tap : tap + size] if axis == 3 else padded[:, :, tap : tap + size]
            )
            blurred += weights[:, tap, None, None, None] * window
        images = blurred
    return images


def gaussian_noise(
    rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray
) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * per_sample(sigma)


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats (N, 1 or 3, H, W) to uint8 RGB, rounding to nearest."""
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
