"""Tissue detection on a low-resolution image of the slide, so glass is never sent to the model.

Otsu's threshold on HSV saturation (glass is grey-white, H&E is coloured), clamped: floored so that a
slide of bare glass, whose saturation is all noise, finds no tissue, and capped so that a slide that is
nearly all tissue is not split into pale and dark tissue instead of tissue and glass; then opening and closing to drop specks and
bridge thin gaps, and removal of pieces under a minimum area. Holes (lumens, fat, tears) are kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MIN_SATURATION = 0.07  # Otsu never goes below this: bare glass stays below it
MAX_SATURATION = 0.15  # nor above this: pale tissue (necrosis, loose stroma) stays above it
MIN_AREA_MM2 = 0.005  # smaller pieces of "tissue" are dust or debris
TISSUE_MPP = 8.0  # resolution of the tissue mask (µm/px), coarsened for very large slides
MAX_TISSUE_SIDE = 4096


@dataclass
class TissueMask:
    mask: np.ndarray  # (h, w) bool
    downsample: float  # level-0 px per mask px
    threshold: float  # saturation threshold used

    @property
    def any(self) -> bool:
        return bool(self.mask.any())


def saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)


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
    """Level-0 px per tissue-mask px: TISSUE_MPP, coarser if the mask would exceed MAX_TISSUE_SIDE."""
    return max(TISSUE_MPP / mpp, max(dimensions) / MAX_TISSUE_SIDE, 1.0)


def detect_tissue(rgb: np.ndarray, downsample: float, mpp: float, threshold: float | None = None) -> TissueMask:
    """Tissue mask of a low-resolution RGB image of the slide (`downsample` level-0 px per pixel)."""
    sat = saturation(rgb)
    if threshold is None:
        threshold = min(max(otsu(sat), MIN_SATURATION), MAX_SATURATION)
    mask = sat > threshold
    # Opening then closing; erosions treat outside the image as tissue so that tissue cut by the
    # slide's edge keeps its edge pixels.
    mask = ndimage.binary_dilation(ndimage.binary_erosion(mask, border_value=1))
    mask = ndimage.binary_erosion(ndimage.binary_dilation(mask, iterations=2), iterations=2, border_value=1)
    labels, n = ndimage.label(mask)
    if n:
        px_mm2 = (downsample * mpp / 1000.0) ** 2
        areas = np.bincount(labels.ravel(), minlength=n + 1) * px_mm2
        keep = areas >= MIN_AREA_MM2
        keep[0] = False
        mask = keep[labels]
    return TissueMask(mask, downsample, float(threshold))
