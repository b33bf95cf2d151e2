"""Opening slides with OpenSlide and reading them at a chosen resolution, with one-line errors.

Every OpenSlide failure (unknown format, unreadable or truncated file) becomes a ConstructError that
starts with the slide's path, so a batch can report it and go on with the other slides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from construct.errors import ConstructError

# TIFF ResolutionUnit values (as OpenSlide reports them) → micrometres per unit.
_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0}
GLASS_RGB = (255, 255, 255)  # what transparent (unscanned) slide areas are composited onto
THUMB_READ_SIDE = 2048  # px per side of one thumbnail read, at the level read (16 MB of RGBA)


@dataclass
class Slide:
    """An open slide: level geometry and level-0 resolution."""

    path: Path
    handle: object  # openslide.OpenSlide
    mpp: float  # level-0 micrometres per pixel
    mpp_source: str  # "metadata" or "--slide-mpp"

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.handle.dimensions

    @property
    def vendor(self) -> str:
        return str(self.handle.properties.get("openslide.vendor", "unknown"))

    def close(self) -> None:
        self.handle.close()

    def read(self, x0: float, y0: float, w0: float, h0: float, out_w: int, out_h: int) -> np.ndarray:
        """The level-0 rectangle (x0, y0, w0, h0) as (out_h, out_w, 3) uint8 RGB, read from the coarsest
        level that still has at least the output's resolution, then resized."""
        import openslide

        ds_wanted = min(w0 / out_w, h0 / out_h)
        level = self.handle.get_best_level_for_downsample(ds_wanted * (1 + 1e-6))
        ds = self.handle.level_downsamples[level]
        size = (max(1, math.ceil(w0 / ds)), max(1, math.ceil(h0 / ds)))
        try:
            region = self.handle.read_region((int(round(x0)), int(round(y0))), level, size)
        except openslide.OpenSlideError as e:
            raise ConstructError(f"{self.path}: unreadable slide data ({e}); the file may be truncated") from e
        rgb = Image.new("RGB", region.size, GLASS_RGB)
        rgb.paste(region, mask=region.getchannel("A"))
        if rgb.size != (out_w, out_h):
            rgb = rgb.resize((out_w, out_h), Image.Resampling.BILINEAR)
        return np.asarray(rgb)

    def thumbnail(self, downsample: float) -> np.ndarray:
        """The whole slide at `downsample` (level-0 px per output px), read region by region, each region
        at most THUMB_READ_SIDE px a side at the level it is read from: memory stays bounded by the output,
        even for a slide without a pyramid, whose every region comes from level 0."""
        w0, h0 = self.dimensions
        out_w, out_h = max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample))
        level = self.handle.get_best_level_for_downsample(downsample * (1 + 1e-6))
        step = max(1, int(THUMB_READ_SIDE * self.handle.level_downsamples[level] / downsample))  # output px
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r in range(0, out_h, step):
            for c in range(0, out_w, step):
                h, w = min(step, out_h - r), min(step, out_w - c)
                x0, y0 = c * downsample, r * downsample
                out[r:r + h, c:c + w] = self.read(x0, y0, min(w * downsample, w0 - x0),
                                                  min(h * downsample, h0 - y0), w, h)
        return out


def metadata_mpp(props) -> float | None:
    """Level-0 µm/px from OpenSlide's `openslide.mpp-x`, else from the TIFF resolution tags."""
    value = props.get("openslide.mpp-x")
    if value:
        return float(value)
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    res = props.get("tiff.XResolution")
    if unit in _UNIT_UM and res and float(res) > 0:
        return _UNIT_UM[unit] / float(res)
    return None


def _looks_like_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(path: Path, slide_mpp: float | None = None) -> Slide:
    """Open a slide; its resolution is the metadata's, or `slide_mpp` for slides whose metadata has none."""
    import openslide

    path = Path(path)
    if not path.is_file():
        raise ConstructError(f"{path}: slide not found")
    try:
        fmt = openslide.OpenSlide.detect_format(str(path))
    except openslide.OpenSlideError as e:
        raise ConstructError(f"{path}: unreadable slide ({e})") from e
    if fmt is None:
        if _looks_like_tiff(path):  # SVS, NDPI, tiled TIFF... whose directory cannot be read
            raise ConstructError(f"{path}: unreadable TIFF-based slide (OpenSlide cannot read its image "
                                 f"directory); the file may be truncated or corrupt")
        raise ConstructError(f"{path}: not a slide format OpenSlide knows (SVS, NDPI, MRXS, tiled TIFF, ...)")
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideError as e:
        raise ConstructError(f"{path}: unreadable {fmt} slide ({e}); the file may be truncated or corrupt") from e
    mpp = metadata_mpp(handle.properties)
    source = "metadata"
    if mpp is None:
        if slide_mpp is None:
            handle.close()
            raise ConstructError(f"{path}: the slide records no resolution (no openslide.mpp-x, no TIFF "
                                 f"resolution tags); pass --slide-mpp")
        mpp, source = slide_mpp, "--slide-mpp"
    return Slide(path, handle, float(mpp), source)
