"""Synthetic pyramidal TIFF slides with known regions, for tests and benchmarks (as `construct synth` is
for tiles).

A slide is a coarse layout of cells (glass or one tissue class each) scaled up to level 0: flat class
colours (each synthetic tile style's base colour mixed with its nuclei's, as the eye averages them at
low power) plus pixel noise, on glass. Written with tifffile as a tiled
pyramid, one page per level, with resolution tags in centimetres, which OpenSlide opens as
`generic-tiff` and reads `openslide.mpp-x` from. The known region map (mask indices at level 0) comes
back with it, so masks, areas and polygons can be checked against the truth, and `ColourPredictor`
reads those colours back: a predictor with known answers and no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from construct.atomic import atomic_output
from construct.data.classes import BCSS, ClassSet
from construct.data.synth import BACKGROUND_COLOR, STYLE_ALIASES, STYLES

# Mask indices of BCSS per cell: four class blocks on glass, and a glass hole inside the tumour block
# (so polygons must keep holes).
DEFAULT_LAYOUT = (
    "44444444",
    "40001114",
    "40401114",
    "40001114",
    "42223334",
    "42223334",
    "42223334",
    "44444444",
)
NUCLEI_SHARE = 0.4  # weight of the nuclei colour in a class's flat colour
TISSUE_NOISE_SD = 6.0
GLASS_NOISE_SD = 2.0
TIFF_TILE = 256
RENDER_ROWS = 512


# Artefacts a real slide carries, painted over a rendered image (RGB, noise sd): scanner edges, pen ink,
# tinted cover-slip glass. Noise is what makes a dark grey look saturated to a naive detector.
ARTEFACT_COLORS = {
    "black-edge": ((12, 12, 12), 10.0),
    "grey-edge": ((62, 56, 70), 10.0),  # a faint colour cast, as scanner edges have
    "blue-ink": ((45, 75, 165), 8.0),
    "green-ink": ((45, 135, 85), 8.0),
    "black-ink": ((38, 38, 50), 8.0),
    "tinted-glass": ((215, 205, 175), 3.0),
}
EDGES = ("black-edge", "grey-edge")  # a band along the left side
INKS = ("blue-ink", "green-ink", "black-ink")  # a wavy stroke


@dataclass(frozen=True)
class SyntheticSlide:
    path: Path
    regions: np.ndarray  # (H, W) uint8 mask indices at level 0 (background index for glass)
    mpp: float | None


def class_colors(classes: ClassSet = BCSS) -> dict[int, tuple[int, int, int]]:
    """Mask index → the flat RGB colour a synthetic slide paints it with (glass included)."""
    colors = {}
    for c in classes.classes:
        style = STYLES[STYLE_ALIASES.get(c.name, c.name)]
        mix = (1 - NUCLEI_SHARE) * np.array(style.base) + NUCLEI_SHARE * np.array(style.nuclei.color)
        colors[c.mask_index] = tuple(int(v) for v in np.rint(mix))
    colors[classes.background_index] = BACKGROUND_COLOR
    return colors


def layout_regions(layout: tuple[str, ...], cell: int) -> np.ndarray:
    """The layout's digits (mask indices) scaled up to `cell` px per layout cell."""
    grid = np.array([[int(ch) for ch in row] for row in layout], dtype=np.uint8)
    return np.kron(grid, np.ones((cell, cell), np.uint8))


def render(regions: np.ndarray, classes: ClassSet = BCSS, seed: int = 0) -> np.ndarray:
    """(H, W, 3) uint8 RGB: each region's colour plus Gaussian noise (less on glass, as on a real scan)."""
    rng = np.random.default_rng(seed)
    colors = class_colors(classes)
    lut = np.zeros((256, 3), np.float32)
    sd = np.full(256, TISSUE_NOISE_SD, np.float32)
    for index, rgb in colors.items():
        lut[index] = rgb
    sd[classes.background_index] = GLASS_NOISE_SD
    out = np.empty((*regions.shape, 3), np.uint8)
    for r in range(0, regions.shape[0], RENDER_ROWS):  # in strips: float32 copies of a whole slide are big
        part = regions[r:r + RENDER_ROWS]
        image = lut[part] + rng.standard_normal((*part.shape, 3), dtype=np.float32) * sd[part][..., None]
        out[r:r + RENDER_ROWS] = np.clip(np.rint(image), 0, 255)
    return out


def artefact_mask(kind: str, shape: tuple[int, int], width: int, where: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """(H, W) bool: where an artefact of `kind` lies, `width` px thick. Edges are a band along the left side;
    ink is a wavy horizontal stroke at `where[0]` of the height, across `where[1]` of the width (from the
    left); tinted glass is a band along the bottom."""
    h, w = shape
    mask = np.zeros(shape, bool)
    if kind in EDGES:
        mask[:, :width] = True
    elif kind in INKS:
        cols = np.arange(int(w * where[1]))
        centre = h * where[0] + 0.5 * width * np.sin(cols / max(w, 1) * 6 * np.pi)
        rows = np.arange(h)[:, None]
        mask[:, cols] = np.abs(rows - centre[None, :]) < width / 2
    elif kind == "tinted-glass":
        mask[h - width:, :] = True
    else:
        raise ValueError(f"unknown artefact {kind!r}; expected one of {', '.join(ARTEFACT_COLORS)}")
    return mask


def paint(image: np.ndarray, mask: np.ndarray, kind: str, seed: int = 0) -> None:
    """Paint artefact `kind` over `image` (uint8 RGB, in place) where `mask` is set."""
    color, sd = ARTEFACT_COLORS[kind]
    noise = np.random.default_rng(seed).standard_normal((int(mask.sum()), 3), dtype=np.float32) * sd
    image[mask] = np.clip(np.rint(np.array(color, np.float32) + noise), 0, 255)


def write_pyramid_tiff(path: Path, image: np.ndarray, mpp: float | None, min_size: int = TIFF_TILE) -> None:
    """A tiled RGB pyramid (halving until the longest side is under `min_size`), one page per level,
    deflate-compressed, with resolution tags when `mpp` is given."""
    import tifffile

    levels = [image]
    while max(levels[-1].shape[:2]) > min_size:
        prev = Image.fromarray(levels[-1])
        levels.append(np.asarray(prev.reduce(2)))
    with atomic_output(path) as tmp, tifffile.TiffWriter(tmp) as tif:
        for k, level in enumerate(levels):
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * 2 ** k)
                extra = {"resolution": (per_cm, per_cm), "resolutionunit": "CENTIMETER"}
            tif.write(level, photometric="rgb", tile=(TIFF_TILE, TIFF_TILE), compression="zlib",
                      subfiletype=1 if k else 0, **extra)


def make_synthetic_slide(path: Path | str, cell: int = 256, mpp: float | None = 0.5,
                         layout: tuple[str, ...] = DEFAULT_LAYOUT, classes: ClassSet = BCSS,
                         seed: int = 0) -> SyntheticSlide:
    """Write a synthetic slide to `path` (.tif) and return it with its known regions.

    Held in memory while written: for test and benchmark sizes (a few thousand px a side), not real ones."""
    regions = layout_regions(layout, cell)
    write_pyramid_tiff(Path(path), render(regions, classes, seed), mpp)
    return SyntheticSlide(Path(path), regions, mpp)


class ColourPredictor:
    """Scores each pixel of a synthetic slide by its (5x5-smoothed) colour's distance to each class colour,
    and counts the tiles it sees. Satisfies construct.inference.parts.Predictor."""

    def __init__(self, classes: ClassSet = BCSS, tile_size: int = 224):
        self.classes, self.tile_size, self.fingerprint = classes, tile_size, "colour-predictor"
        self.device = torch.device("cpu")
        colours = class_colors(classes)
        order = [c.mask_index for c in classes.classes] + [classes.background_index]
        self.ref = torch.tensor([colours[i] for i in order], dtype=torch.float32) / 255
        self.seen = 0

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        self.seen += len(images01)
        x = torch.nn.functional.avg_pool2d(images01, 5, 1, 2, count_include_pad=False)
        d = ((x[:, None] - self.ref[None, :, :, None, None]) ** 2).sum(2)
        return torch.softmax(-d * 200, dim=1), torch.ones(len(images01), len(self.classes))
