"""Opening slides with OpenSlide and reading them at a chosen resolution, with one-line errors.

Every OpenSlide failure (unknown format, unreadable or truncated file) becomes a ConstructError that
starts with the slide's path, so a batch can report it and go on with the other slides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from construct.errors import ConstructError

# TIFF ResolutionUnit values (as OpenSlide reports them) → micrometres per unit.
_UNIT_UM = {"centimeter": 1e4, "inch": 25400.0}
GLASS_RGB = (255, 255, 255)  # what transparent (unscanned) slide areas are composited onto
MPP_RANGE = (0.05, 20.0)  # µm/px a scan can have (beyond a 100x objective to a 0.5x overview); 72 dpi is 352.8
MPP_XY_TOLERANCE = 0.01  # mpp-x and mpp-y further apart than this are reported
LEVEL_TOLERANCE = 0.01  # vendors round level downsamples (Aperio: 4.0003 for 4); a level this close serves
THUMB_READ_SIDE = 2048  # px per side of one thumbnail read, at the level read (16 MB of RGBA)


@dataclass
class Slide:
    """An open slide: level geometry and level-0 resolution."""

    path: Path
    handle: object  # openslide.OpenSlide
    mpp: float  # level-0 micrometres per pixel
    mpp_source: str  # "metadata" or "--slide-mpp"
    warnings: list[str] = field(default_factory=list)  # resolution doubts, echoed and kept in summary.json

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

        level = best_level(self.handle.level_downsamples, min(w0 / out_w, h0 / out_h))
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
        level = best_level(self.handle.level_downsamples, downsample)  # the level `read` takes
        step = max(1, int(THUMB_READ_SIDE * self.handle.level_downsamples[level] / downsample))  # output px
        out = np.empty((out_h, out_w, 3), np.uint8)
        for r in range(0, out_h, step):
            for c in range(0, out_w, step):
                h, w = min(step, out_h - r), min(step, out_w - c)
                x0, y0 = c * downsample, r * downsample
                out[r:r + h, c:c + w] = self.read(x0, y0, min(w * downsample, w0 - x0),
                                                  min(h * downsample, h0 - y0), w, h)
        return out


def best_level(downsamples: Sequence[float], wanted: float) -> int:
    """The coarsest level that still has (within vendors' rounding) the wanted resolution."""
    fits = [i for i, d in enumerate(downsamples) if d <= wanted * (1 + LEVEL_TOLERANCE)]
    return max(fits, key=lambda i: downsamples[i]) if fits else 0


def metadata_resolution(props) -> tuple[float, float, str] | None:
    """Level-0 (µm/px across, down, where it was read) from OpenSlide's `openslide.mpp-x/y`, else from the
    TIFF resolution tags; None if the slide records neither. Unparsable values raise ValueError."""
    x = props.get("openslide.mpp-x")
    if x:
        return float(x), float(props.get("openslide.mpp-y") or x), "openslide.mpp-x"
    unit = str(props.get("tiff.ResolutionUnit", "")).lower()
    rx, ry = props.get("tiff.XResolution"), props.get("tiff.YResolution")
    if unit in _UNIT_UM and rx and float(rx) > 0:
        rx, ry = float(rx), float(ry or rx)
        return _UNIT_UM[unit] / rx, _UNIT_UM[unit] / ry, f"the TIFF resolution tags, {rx:g} px per {unit}"
    return None


def metadata_mpp(props) -> float | None:
    """Level-0 µm/px across, from the metadata (see `metadata_resolution`)."""
    found = metadata_resolution(props)
    return None if found is None else found[0]


def checked_resolution(path: Path, props) -> tuple[float, list[str]]:
    """The metadata's µm/px, refused in one line if missing or implausible, with a warning if x and y
    disagree."""
    try:
        found = metadata_resolution(props)
    except (ValueError, ZeroDivisionError) as e:
        raise ConstructError(f"{path}: unreadable resolution metadata ({e}); pass --slide-mpp") from e
    if found is None:
        raise ConstructError(f"{path}: the slide records no resolution (no openslide.mpp-x, no TIFF "
                             f"resolution tags); pass --slide-mpp")
    x, y, where = found
    lo, hi = MPP_RANGE
    for value in (x, y):
        if not lo <= value <= hi:
            raise ConstructError(f"{path}: {value:g} µm/px (from {where}) is outside the {lo:g}-{hi:g} µm/px a "
                                 f"scan can have; pass --slide-mpp")
    warnings = []
    if abs(y / x - 1) > MPP_XY_TOLERANCE:
        warnings.append(f"{path}: mpp-x {x:g} and mpp-y {y:g} µm/px differ by {abs(y / x - 1):.1%}; using "
                        f"mpp-x (--slide-mpp overrides it)")
    return x, warnings


def _looks_like_tiff(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def open_slide(path: Path, slide_mpp: float | None = None) -> Slide:
    """Open a slide; its resolution is `slide_mpp` if given, else the metadata's (checked)."""
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
    if slide_mpp is not None:  # the user's word beats the file's, which may be a screen's 72 dpi
        return Slide(path, handle, float(slide_mpp), "--slide-mpp")
    try:
        mpp, warnings = checked_resolution(path, handle.properties)
    except ConstructError:
        handle.close()
        raise
    return Slide(path, handle, mpp, "metadata", warnings)
