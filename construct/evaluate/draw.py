"""The report's pictures, drawn with PIL: confusion matrix, per-class bars, mask overlays, thumbnails."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from construct.data.classes import ClassSet

BACKGROUND_LABEL = "BG"
CORNER_LABEL = "gt \\ pred"
FONT_SIZE = 13
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GRID = (200, 200, 200)
# Confusion cells shade from white to this colour with the row-normalised fraction.
CELL_DARK = (8, 48, 107)
# Above this shade the cell text switches to white to stay readable.
TEXT_FLIP = 0.5
CELL = 84
MARGIN = 56
OVERLAY_ALPHA = 0.45
BAR_HEIGHT = 14
BAR_GAP = 8
BAR_SCALE = 360  # pixels for 100 %
BAR_LABEL_WIDTH = 56
BAR_VALUE_WIDTH = 56
PERCENT = 100.0
# Rec. 709 luma weights; text on a colour darker than INK_FLIP_LUMA (0-255) is written in white.
LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)
INK_FLIP_LUMA = 128.0


def _font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=FONT_SIZE)


def mask_labels(classes: ClassSet) -> list[str]:
    """A label per mask index: class short names, 'BG' for background."""
    labels = ["?"] * classes.n_mask_values
    for c in classes.classes:
        labels[c.mask_index] = c.name
    labels[classes.background_index] = BACKGROUND_LABEL
    return labels


def _compact(count: int) -> str:
    """Pixel counts run to hundreds of millions; 3 significant figures are enough to read."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return str(count)


def readable_ink(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black or white text, whichever reads on `color` (class colours run from yellow to deep blue)."""
    luma = sum(w * c for w, c in zip(LUMA_WEIGHTS, color))
    return WHITE if luma < INK_FLIP_LUMA else BLACK


def _centered(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, fill: tuple[int, int, int]) -> None:
    draw.text(xy, text, fill=fill, font=_font(), anchor="mm")


def confusion_image(conf: np.ndarray, labels: list[str]) -> Image.Image:
    """Rows = ground truth, columns = prediction; shade and % normalised by row, pixel count below."""
    n = len(labels)
    size = MARGIN + n * CELL + 1  # + 1 so the last cell's outline is inside the picture
    img = Image.new("RGB", (size, size), WHITE)
    draw = ImageDraw.Draw(img)
    _centered(draw, (MARGIN / 2, MARGIN / 2), CORNER_LABEL, BLACK)
    rows = conf.sum(axis=1, keepdims=True)
    frac = np.divide(conf, rows, out=np.zeros(conf.shape), where=rows > 0)
    for i in range(n):
        _centered(draw, (MARGIN / 2, MARGIN + (i + 0.5) * CELL), labels[i], BLACK)
        _centered(draw, (MARGIN + (i + 0.5) * CELL, MARGIN / 2), labels[i], BLACK)
        for j in range(n):
            f = float(frac[i, j])
            fill = tuple(round(w + f * (d - w)) for w, d in zip(WHITE, CELL_DARK))
            x0, y0 = MARGIN + j * CELL, MARGIN + i * CELL
            draw.rectangle([x0, y0, x0 + CELL, y0 + CELL], fill=fill, outline=GRID)
            ink = WHITE if f > TEXT_FLIP else BLACK
            _centered(draw, (x0 + CELL / 2, y0 + CELL * 0.4), f"{f * PERCENT:.1f}%", ink)
            _centered(draw, (x0 + CELL / 2, y0 + CELL * 0.65), _compact(int(conf[i, j])), ink)
    return img


def _lighter(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return tuple((c + 255) // 2 for c in color)  # type: ignore[return-value]


def score_bars(names: list[str], iou: list[float], dice: list[float], colors: list[tuple[int, int, int]]) -> Image.Image:
    """Per class, an IoU bar (class colour) above a Dice bar (lighter), on a 0-100 % scale."""
    group = 2 * BAR_HEIGHT + BAR_GAP
    width = BAR_LABEL_WIDTH + BAR_SCALE + BAR_VALUE_WIDTH
    img = Image.new("RGB", (width, BAR_GAP + len(names) * group), WHITE)
    draw = ImageDraw.Draw(img)
    for k, (name, color) in enumerate(zip(names, colors)):
        top = BAR_GAP + k * group
        _centered(draw, (BAR_LABEL_WIDTH / 2, top + BAR_HEIGHT), name, BLACK)
        for b, (value, fill) in enumerate(((iou[k], color), (dice[k], _lighter(color)))):
            y = top + b * BAR_HEIGHT
            undefined = math.isnan(value)
            length = 0 if undefined else round(value / PERCENT * BAR_SCALE)
            draw.rectangle([BAR_LABEL_WIDTH, y, BAR_LABEL_WIDTH + BAR_SCALE, y + BAR_HEIGHT - 2], outline=GRID)
            if length:
                draw.rectangle([BAR_LABEL_WIDTH, y, BAR_LABEL_WIDTH + length, y + BAR_HEIGHT - 2], fill=fill)
            text = "n/a" if undefined else f"{value:.1f}"
            draw.text((BAR_LABEL_WIDTH + BAR_SCALE + 4, y), text, fill=BLACK, font=_font())
    return img


def overlay(image: np.ndarray, mask: np.ndarray, classes: ClassSet, alpha: float = OVERLAY_ALPHA) -> Image.Image:
    """Class colours blended over the tile; background pixels keep the tissue visible, untinted."""
    base = Image.fromarray(image).convert("RGB")
    if base.size != (mask.shape[1], mask.shape[0]):
        base = base.resize((mask.shape[1], mask.shape[0]), Image.BILINEAR)
    rgb = np.asarray(base, dtype=np.float32)
    lut = np.asarray(classes.palette(), dtype=np.float32).reshape(-1, 3)
    tinted = (1 - alpha) * rgb + alpha * lut[mask]
    keep = (mask == classes.background_index)[..., None]
    return Image.fromarray(np.where(keep, rgb, tinted).round().astype(np.uint8))


def thumbnail(image: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
