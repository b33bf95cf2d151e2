"""A generated slide of real size, written tile by tile (never whole in memory): real H&E texture on glass,
pen strokes over glass and tissue, and a dark scanner edge, as a tiled pyramidal TIFF that OpenSlide opens.

Texture: the CMU Aperio crop (openslide's test slide, 0.499 µm/px), mirror-tiled over the tissue. Tissue:
a smooth random blob (a low-resolution random field, blurred, thresholded) inside a margin of glass. Ink:
blue, green and black strokes; the edge: a dark, noisy band down the left side. Every level of the
pyramid is rendered from the same definition at its own resolution, so no level is built from another.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

TILE = 256
CMU = Path.home() / ".cache" / "construct" / "cmu_small_region.svs"
FIELD_CELL_UM = 1000.0  # one random-field value per mm: blobs of a few mm
TISSUE_SHARE = 0.55  # of the area inside the margin
MARGIN = 0.06  # glass around the tissue, share of the side
EDGE_UM = 160.0  # the dark scanner edge's width
INK_UM = 60.0  # a pen stroke's width
# Strokes as polylines in fractions of the slide's side, with their colours.
STROKES = (
    ((30, 60, 170), ((0.05, 0.10), (0.30, 0.04), (0.62, 0.12), (0.95, 0.08))),
    ((40, 150, 70), ((0.90, 0.20), (0.96, 0.55), (0.88, 0.93))),
    ((25, 25, 30), ((0.20, 0.97), (0.50, 0.90), (0.80, 0.96))),
)


@dataclass(frozen=True)
class BigSlide:
    path: Path
    side: int  # level-0 px
    mpp: float

    @property
    def area_mm2(self) -> float:
        return (self.side * self.mpp / 1000.0) ** 2


def load_texture(path: Path = CMU) -> np.ndarray:
    import openslide

    slide = openslide.OpenSlide(str(path))
    rgba = slide.read_region((0, 0), 0, slide.dimensions)
    slide.close()
    return np.asarray(rgba.convert("RGB"))


class Painter:
    def __init__(self, side: int, mpp: float, texture: np.ndarray, seed: int):
        self.side, self.mpp = side, mpp
        rng = np.random.default_rng(seed)
        n = max(4, int(side * mpp / FIELD_CELL_UM))
        field = ndimage.gaussian_filter(rng.standard_normal((n, n)), 1.0)
        inner = np.zeros_like(field, bool)
        m = round(MARGIN * n)
        inner[m:n - m, m:n - m] = True
        cut = np.quantile(field[inner], 1 - TISSUE_SHARE)
        self.field = np.where(inner, field - cut, -1.0)  # > 0: tissue
        self.field_scale = (n - 1) / side
        self.textures: dict[int, np.ndarray] = {1: texture}
        bright = texture[texture.min(axis=-1) > 200]  # the crop's own glass: the slide's glass matches it
        self.glass = np.median(bright, axis=0).astype(np.float32) if len(bright) else np.full(3, 240, np.float32)
        self.strokes = [(np.array(c, np.float32), np.array(pts) * side) for c, pts in STROKES]
        self.rng = np.random.default_rng(seed + 1)

    def texture(self, ds: int) -> np.ndarray:
        if ds not in self.textures:
            self.textures[ds] = np.asarray(Image.fromarray(self.textures[1]).reduce(ds))
        return self.textures[ds]

    def tile(self, x0: int, y0: int, ds: int) -> np.ndarray:
        """The TILE x TILE px at level-`ds` px (x0, y0): level-0 coordinates (x0, y0) * ds."""
        ys = (y0 + np.arange(TILE)) * ds + ds / 2
        xs = (x0 + np.arange(TILE)) * ds + ds / 2
        yy, xx = np.meshgrid(ys, xs, indexing="ij")
        tissue = ndimage.map_coordinates(self.field, [yy * self.field_scale, xx * self.field_scale],
                                         order=1, mode="nearest") > 0
        tex = self.texture(ds)
        th, tw = tex.shape[:2]
        r = (y0 + np.arange(TILE)) % (2 * th)
        c = (x0 + np.arange(TILE)) % (2 * tw)
        r, c = np.where(r < th, r, 2 * th - 1 - r), np.where(c < tw, c, 2 * tw - 1 - c)  # mirror tiling
        img = np.where(tissue[..., None], tex[np.ix_(r, c)].astype(np.float32),
                       self.glass + self.rng.normal(0, 2, (TILE, TILE, 1)).astype(np.float32))
        half = INK_UM / self.mpp / 2
        for colour, pts in self.strokes:
            d = np.full((TILE, TILE), np.inf, np.float32)
            for a, b in pairwise(pts):
                lo, hi = np.minimum(a, b) - half, np.maximum(a, b) + half
                if xs[-1] < lo[0] or xs[0] > hi[0] or ys[-1] < lo[1] or ys[0] > hi[1]:
                    continue
                ab = b - a
                t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / (ab @ ab), 0, 1)
                d = np.minimum(d, np.hypot(xx - a[0] - t * ab[0], yy - a[1] - t * ab[1]))
            ink = (d < half)[..., None]
            img = np.where(ink, 0.25 * img + 0.75 * colour, img)
        edge = (xx < EDGE_UM / self.mpp)[..., None]
        img = np.where(edge, 28 + self.rng.normal(0, 8, (TILE, TILE, 1)).astype(np.float32), img)
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def make_big_slide(path: Path, side: int, mpp: float = 0.5, seed: int = 0, texture: np.ndarray | None = None,
                   min_side: int = 512) -> BigSlide:
    """Write a `side` x `side` px slide at `mpp` to `path` (.tif), level by level, tile by tile."""
    import tifffile

    painter = Painter(side, mpp, load_texture() if texture is None else texture, seed)
    tmp = path.with_suffix(".partial.tif")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        ds, k = 1, 0
        while True:
            h = w = -(-side // ds)
            tiles = (painter.tile(x, y, ds) for y in range(0, h, TILE) for x in range(0, w, TILE))
            per_cm = 1e4 / (mpp * ds)
            tif.write(tiles, shape=(h, w, 3), dtype="uint8", tile=(TILE, TILE), photometric="rgb",
                      compression="zlib", compressionargs={"level": 1}, resolution=(per_cm, per_cm),
                      resolutionunit="CENTIMETER", subfiletype=1 if k else 0)
            if max(h, w) <= min_side:
                break
            ds, k = ds * 2, k + 1
    tmp.replace(path)
    return BigSlide(path, side, mpp)
