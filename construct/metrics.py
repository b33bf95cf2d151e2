"""Segmentation metrics from a confusion matrix (rows = ground truth, columns = prediction).

Everything is computed from one matrix accumulated over all images (the paper's protocol), never
averaged per image. Values are percentages; a class that appears in neither the ground truth nor
the prediction has no IoU/Dice (NaN) and is left out of the means.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from construct.data.classes import ClassSet

# The paper's protocol: ground-truth background pixels count, so foreground predictions there are
# false positives. MLPS's protocol drops them (background predicted on tissue is still an error).
PROTOCOLS = ("bcss", "ignore-background")

PERCENT = 100.0


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, n: int) -> np.ndarray:
    """n x n pixel counts of (ground truth, prediction) pairs; both arrays hold indices in 0..n-1."""
    pairs = gt.astype(np.int64).ravel() * n + pred.astype(np.int64).ravel()
    return np.bincount(pairs, minlength=n * n).reshape(n, n)


def apply_protocol(conf: np.ndarray, protocol: str, background_index: int) -> np.ndarray:
    """The matrix the protocol scores: `ignore-background` zeroes the ground-truth background row."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if protocol == "bcss":
        return conf
    kept = conf.copy()
    kept[background_index, :] = 0
    return kept


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den in percent, NaN where den == 0 (undefined rather than a misleading 0)."""
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out * PERCENT


def _nanmean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


@dataclass(frozen=True)
class Scores:
    """Metrics of one confusion matrix. Per-class arrays are indexed by mask index (all classes)."""

    iou: np.ndarray
    dice: np.ndarray
    miou: float  # over the foreground (tissue) classes only
    mdice: float
    fwiou: float  # over all classes, weighted by ground-truth pixel counts
    pixel_accuracy: float


def scores(conf: np.ndarray, classes: ClassSet) -> Scores:
    """IoU_c = TP/(row+col-TP), Dice_c = 2TP/(row+col); means over the tissue classes."""
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    rows = conf.sum(axis=1)
    cols = conf.sum(axis=0)
    iou = _ratio(tp, rows + cols - tp)
    dice = _ratio(2 * tp, rows + cols)
    tissue = [c.mask_index for c in classes.classes]
    total = rows.sum()
    # A class with no ground-truth pixels has weight 0 whatever its IoU, so NaN never enters the sum.
    weighted = np.where(rows > 0, np.nan_to_num(iou), 0.0)
    fwiou = float((rows * weighted).sum() / total) if total else float("nan")
    accuracy = float(tp.sum() / total * PERCENT) if total else float("nan")
    return Scores(
        iou=iou,
        dice=dice,
        miou=_nanmean(iou[tissue]),
        mdice=_nanmean(dice[tissue]),
        fwiou=fwiou,
        pixel_accuracy=accuracy,
    )
