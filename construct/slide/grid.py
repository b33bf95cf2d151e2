"""The tiling grid: the slide resampled to the model's resolution, cut into overlapping tiles.

Grid pixels are at the model's µm/px; one grid pixel is `scale` level-0 pixels. Tiles start every
`stride` grid pixels, with one more tile flush with the right and bottom edges, so every grid pixel is
covered. A slide smaller than one tile gets one tile, padded past its edge with glass (OpenSlide reads
nothing there), whose scores are cropped to the slide. Only tiles that touch tissue are kept, in column
strips (a few tiles wide, top to bottom) so that the stitched blocks still being summed stay few whatever
the slide's width.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from construct.errors import ConstructError
from construct.slide.tissue import TissueMask

STRIP_TILES = 8  # tiles per column strip


@dataclass(frozen=True)
class Grid:
    scale: float  # level-0 px per grid px
    width: int  # grid px
    height: int
    tile: int
    overlap: int

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    def starts(self, length: int) -> list[int]:
        if length <= self.tile:
            return [0]
        s = list(range(0, length - self.tile + 1, self.stride))
        if s[-1] != length - self.tile:
            s.append(length - self.tile)
        return s

    def tissue_tiles(self, tissue: TissueMask) -> list[tuple[int, int]]:
        """(x, y) grid origins of the tiles whose footprint touches tissue, in column-strip order."""
        xs, ys = self.starts(self.width), self.starts(self.height)
        f = self.scale / tissue.downsample  # tissue-mask px per grid px
        h, w = tissue.mask.shape
        # Prefix sums make each tile's "any tissue under it" an O(1) lookup.
        integral = np.pad(tissue.mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

        def touches(x: int, y: int) -> bool:
            c0, r0 = min(int(x * f), w), min(int(y * f), h)
            c1, r1 = min(math.ceil((x + self.tile) * f), w), min(math.ceil((y + self.tile) * f), h)
            return integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0] > 0

        out = []
        for s in range(0, len(xs), STRIP_TILES):
            out.extend((x, y) for y in ys for x in xs[s:s + STRIP_TILES] if touches(x, y))
        return out


def make_grid(dimensions: tuple[int, int], slide_mpp: float, target_mpp: float, tile: int, overlap: int) -> Grid:
    """The grid of a slide of level-0 `dimensions` at `slide_mpp`, resampled to `target_mpp`."""
    if not 0 <= overlap < tile:
        raise ConstructError(f"--overlap {overlap}: expected 0 to {tile - 1} px (the tile is {tile} px)")
    scale = target_mpp / slide_mpp
    width, height = max(1, int(dimensions[0] / scale)), max(1, int(dimensions[1] / scale))
    return Grid(scale, width, height, tile, overlap)


def blend_window(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """(tile, tile) float32 weights: 1 in the middle, a raised-cosine ramp across each overlap, so
    neighbouring tiles hand over smoothly (no seams) and tile borders, where a model sees least
    context, count least. Never zero, so a pixel only one tile covers keeps that tile's scores."""
    ramp = np.ones(tile, np.float32)
    if overlap:
        t = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
        edge = 0.5 - 0.5 * np.cos(np.pi * t)
        ramp[:overlap] = edge
        ramp[tile - overlap:] = edge[::-1]
    ramp = np.maximum(ramp, floor)
    return np.outer(ramp, ramp)
