"""The digit glyphs of the fonts matplotlib ships, for the embedded ``font-digits`` and
``street-digits`` domains: rendered once, scaled to a common digit height, kept in a bank."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fedmatch.data.types import NUM_CLASSES

if TYPE_CHECKING:
    from matplotlib.ft2font import FT2Font

logger = logging.getLogger(__name__)

# Glyph bank geometry: each digit's ink is scaled to GLYPH_HEIGHT pixels and centred in a
# GLYPH_CANVAS square, so "digit height h" maps to one scale factor for every font.
GLYPH_CANVAS = 64


GLYPH_HEIGHT = 48


GLYPH_HALF_HEIGHT = GLYPH_HEIGHT / GLYPH_CANVAS  # in grid_sample's [-1, 1] coordinates


# Text fonts bundled with matplotlib that have ordinary lining digits. An allow-list, because a
# render check alone cannot tell digits from the symbols that cmex10/cmsy10 put at the digit
# code points, nor reject cmmi10's old-style figures or the LastResort placeholder font.
FONT_FILES: tuple[str, ...] = (
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


MIN_FONTS = 4


@dataclass(frozen=True)
class GlyphBank:
    """Every (font, digit) glyph rendered once: ``glyphs[font * 10 + digit]``."""

    glyphs: torch.Tensor  # (fonts * 10, 1, GLYPH_CANVAS, GLYPH_CANVAS) ink coverage in [0, 1]
    width_ratio: np.ndarray  # (fonts * 10,) ink width divided by ink height

    @property
    def num_fonts(self) -> int:
        return len(self.width_ratio) // NUM_CLASSES


def glyph_bank() -> GlyphBank:
    """Render digits 0-9 of every usable bundled font once, at high resolution.

    The thousands of samples are then made by warping these few hundred bitmaps with
    ``grid_sample``, which is orders of magnitude faster than rasterising every sample.
    """
    import matplotlib
    from matplotlib.ft2font import FT2Font

    font_dir = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    glyphs: list[torch.Tensor] = []
    width_ratios: list[float] = []
    for file_name in FONT_FILES:
        path = font_dir / file_name
        if not path.is_file():
            logger.debug("font %s is not bundled with this matplotlib; skipping it", file_name)
            continue
        font = FT2Font(str(path))
        rendered = [render_glyph(font, str(digit)) for digit in range(NUM_CLASSES)]
        if any(glyph is None for glyph in rendered) or has_duplicates(rendered):
            logger.debug("font %s lacks proper digit glyphs; skipping it", file_name)
            continue
        for ink in rendered:
            assert ink is not None
            canvas, width_ratio = fit_glyph(ink)
            glyphs.append(canvas)
            width_ratios.append(width_ratio)
    if len(width_ratios) < MIN_FONTS * NUM_CLASSES:
        raise RuntimeError(
            f"only {len(width_ratios) // NUM_CLASSES} usable digit fonts found in {font_dir}; "
            f"the synthetic digit domains need at least {MIN_FONTS}"
        )
    return GlyphBank(torch.stack(glyphs)[:, None], np.asarray(width_ratios))


def render_glyph(font: FT2Font, char: str) -> np.ndarray | None:
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


def has_duplicates(bitmaps: list[np.ndarray | None]) -> bool:
    """True when two digits render identically, as in fallback fonts that draw one box."""
    keys = {(b.shape, b.tobytes()) for b in bitmaps if b is not None}
    return len(keys) < len(bitmaps)


def fit_glyph(ink: np.ndarray) -> tuple[torch.Tensor, float]:
    """Scale ink to GLYPH_HEIGHT pixels high, centre it on an empty square canvas.

    Returns the canvas and the ink's width/height ratio, needed to space digits in a row.
    """
    height, width = ink.shape
    new_width = max(1, min(GLYPH_CANVAS - 4, round(width * GLYPH_HEIGHT / height)))
    resized = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(ink))[None, None],
        size=(GLYPH_HEIGHT, new_width),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0]
    canvas = torch.zeros(GLYPH_CANVAS, GLYPH_CANVAS)
    top = (GLYPH_CANVAS - GLYPH_HEIGHT) // 2
    left = (GLYPH_CANVAS - new_width) // 2
    canvas[top : top + GLYPH_HEIGHT, left : left + new_width] = resized.clamp(0.0, 1.0)
    return canvas, new_width / GLYPH_HEIGHT
