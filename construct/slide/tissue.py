"""Tissue detection on a low-resolution image of the slide, so glass and artefacts are never sent to the model.

Saturation tells H&E (coloured) from glass (grey-white). Three rules say what can never be tissue, whatever
its saturation:

- near-black (scanner edges, black ink) and near-white (glass) pixels, by brightness alone;
- grey pixels, by chroma (max - min channel, not divided by brightness as saturation is): a dark grey
  scanner edge or black ink has little chroma but a large saturation; and dim pixels that are not strongly
  coloured (H&E's darkest, dense nuclei, is; a dark edge with a colour cast is not);
- hues H&E does not have: haematoxylin purple through eosin pink to red is tissue; pen ink (blue, green)
  and tinted glass (yellow-brown cover-slip edges, blue-grey mounting medium) are not.

Each decision is median-filtered (CLAM median-blurs before its threshold: scanner noise makes dark pixels
look saturated, and dust makes specks). A median of a thresholded image is a majority vote over the window,
and for one channel and one threshold it equals thresholding the median-blurred channel; it is a box filter,
seconds cheaper than a median of the image on a 4096 px thumbnail.

Among the rest, Otsu's threshold on saturation (computed without the artefacts, clamped: floored so that a
slide of bare glass, whose saturation is all noise, finds no tissue, and capped so that a slide that is nearly
all tissue is not split into pale and dark tissue) finds the tissue; pale tissue (necrosis, fat, loose
stroma) above a lower saturation joins it where it touches it (hysteresis). Opening and closing drop specks
and bridge thin gaps; pieces under a minimum area go. Holes (lumens, fat, tears) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

MIN_SATURATION = 0.07  # Otsu never goes below this: bare glass stays below it
MAX_SATURATION = 0.15  # nor above this: pale tissue (necrosis, loose stroma) stays above it
PALE_SATURATION = 0.05  # pale tissue touching tissue joins it above this
MEDIAN_PX = 5  # median window, tissue-mask px (40 µm at 8 µm/px): noise and dust, not thin strands
DARK_VALUE = 50  # brightest channel (0-255) below this: black, never tissue (H&E's darkest is about 75)
WHITE_VALUE = 225  # darkest channel above this: glass, never tissue (pale H&E keeps one channel lower)
DIM_VALUE = 110  # brightest channel below this: dim, tissue only if strongly coloured (dense nuclei are)
DIM_SATURATION = 0.25  # a dim pixel below this saturation is a dark edge or ink with a colour cast
MIN_CHROMA = 12  # max - min channel (0-255) below this: grey, never tissue (H&E is at least about 19)
HE_HUES = (245.0, 30.0)  # degrees, wrapping through 0: purple (haematoxylin) to pink and red (eosin, blood)
MIN_AREA_MM2 = 0.005  # smaller pieces of "tissue" are dust or debris...
MIN_AREA_SHARE = 0.01  # ...unless the image itself is so small (a crop) that they are a good part of it
TISSUE_MPP = 8.0  # resolution of the tissue mask (µm/px), coarsened for very large slides...
MAX_TISSUE_SIDE = 4096
MIN_TISSUE_SIDE = 64  # ...and refined for very small ones
PREVIEW_FADE = 0.25  # tissue.png: what was not kept is shown at this strength over white


@dataclass
class TissueMask:
    mask: np.ndarray  # (h, w) bool
    downsample: float  # level-0 px per mask px
    threshold: float  # saturation threshold used
    image: np.ndarray | None = None  # (h, w, 3) uint8: the low-resolution slide image it was found on

    @property
    def any(self) -> bool:
        return bool(self.mask.any())


def extremes(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brightest and darkest channel of each pixel (channel by channel: numpy's max over a last axis of 3
    is several times slower)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation (max - min) / max of uint8 RGB, float32 in [0, 1] (0 for black)."""
    mx, mn = extremes(rgb)
    mx = mx.astype(np.float32)
    return (mx - mn) / np.maximum(mx, 1.0)


def hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees [0, 360) of uint8 RGB (0 for greys)."""
    return np.asarray(Image.fromarray(rgb, "RGB").convert("HSV"))[..., 0].astype(np.float32) * (360.0 / 256.0)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1]: the cut maximising the between-class variance."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(p)
    m0 = np.cumsum(p * centres)
    total = m0[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total * w0 - m0) ** 2 / (w0 * (1 - w0))
    between = np.nan_to_num(between)
    return float(edges[int(np.argmax(between)) + 1])


def tissue_downsample(dimensions: tuple[int, int], mpp: float) -> float:
    """Level-0 px per tissue-mask px: TISSUE_MPP, coarser if the mask would exceed MAX_TISSUE_SIDE, finer if
    it would be under MIN_TISSUE_SIDE."""
    side = max(dimensions)
    return max(min(TISSUE_MPP / mpp, side / MIN_TISSUE_SIDE), side / MAX_TISSUE_SIDE, 1.0)


def slide_tissue(slide, threshold: float | None = None) -> TissueMask:
    """The tissue of an open slide (anything with `dimensions`, `mpp` and `thumbnail(downsample)`), found on
    its thumbnail at `tissue_downsample`."""
    d = tissue_downsample(slide.dimensions, slide.mpp)
    return detect_tissue(slide.thumbnail(d), d, slide.mpp, threshold)


def majority(mask: np.ndarray, size: int = MEDIAN_PX) -> np.ndarray:
    """The median of a boolean image over size x size windows: set where most of the window is."""
    if min(mask.shape) < size:
        return mask
    return ndimage.uniform_filter(mask.astype(np.float32), size, mode="nearest") > 0.5


def artefacts(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(never tissue, artefact) masks of a uint8 RGB image. Never tissue: near-black, dim and
    greyish, near-white, grey, or of a hue H&E does not have. Artefacts are those that are neither glass nor
    tissue (dark edges, ink, tinted glass): they are also kept out of Otsu's threshold."""
    mx, mn = extremes(rgb)
    chroma = mx.astype(np.int16) - mn
    hue = hue_degrees(rgb)
    lo, hi = HE_HUES
    wrong_hue = (chroma >= MIN_CHROMA) & ~((hue >= lo) | (hue <= hi))
    artefact = (mx < DARK_VALUE) | ((mx < DIM_VALUE) & (chroma < DIM_SATURATION * mx)) | wrong_hue
    return artefact | (mn > WHITE_VALUE) | (chroma < MIN_CHROMA), artefact


def detect_tissue(rgb: np.ndarray, downsample: float, mpp: float, threshold: float | None = None) -> TissueMask:
    """Tissue mask of a low-resolution RGB image of the slide (`downsample` level-0 px per pixel).
    `threshold` replaces Otsu's saturation cut; the artefact rules apply either way."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    sat = saturation(rgb)
    never, artefact = artefacts(rgb)
    if threshold is None:
        # Glass and tissue only, as on a clean slide: dark edges and ink would drag the cut.
        threshold = min(max(otsu(sat[~artefact]), MIN_SATURATION), MAX_SATURATION)
    candidate = majority(~never & (sat > min(PALE_SATURATION, threshold)))
    strong = majority(~never & (sat > threshold))
    pieces, n = ndimage.label(candidate)
    # Hysteresis: a piece of pale tissue is tissue if it holds tissue above the threshold.
    keep = np.zeros(n + 1, bool)
    keep[np.unique(pieces[candidate & strong])] = True
    keep[0] = False
    mask = keep[pieces]
    # Opening then closing; erosions treat outside the image as tissue so that tissue cut by the
    # slide's edge keeps its edge pixels.
    mask = ndimage.binary_dilation(ndimage.binary_erosion(mask, border_value=1))
    mask = ndimage.binary_erosion(ndimage.binary_dilation(mask, iterations=2), iterations=2, border_value=1)
    labels, n = ndimage.label(mask)
    if n:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        min_px = min(MIN_AREA_MM2 / (downsample * mpp / 1000.0) ** 2, MIN_AREA_SHARE * mask.size)
        keep = areas >= min_px
        keep[0] = False
        mask = keep[labels]
    return TissueMask(mask, downsample, float(threshold), rgb)


def tissue_preview(tissue: TissueMask) -> Image.Image:
    """What was kept: the slide image where tissue was found, faded towards white elsewhere (glass, ink,
    scanner edges), so a glance shows whether an artefact was taken for tissue. A plain mask if the image
    is not at hand."""
    if tissue.image is None:
        return Image.fromarray(tissue.mask.astype(np.uint8) * 255)
    image = tissue.image.astype(np.float32)
    faded = 255.0 - PREVIEW_FADE * (255.0 - image)
    return Image.fromarray(np.where(tissue.mask[..., None], image, faded).round().astype(np.uint8))
