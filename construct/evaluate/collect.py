"""Match prediction PNGs to a split's ground-truth masks and count their confusion, image by image."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from construct.data.classes import ClassSet
from construct.data.dataset import Sample, read_mask
from construct.errors import ConstructError
from construct.metrics import confusion_matrix

PRED_SUFFIX = ".png"
# How many file names a one-line error shows before "and N more".
NAMES_SHOWN = 3


@dataclass(frozen=True)
class Collected:
    """Per-image confusion matrices (all ground-truth pixels, no protocol applied yet)."""

    samples: list[Sample]  # the images that were scored, in split order
    confusions: np.ndarray  # (len(samples), n, n) int64
    missing: list[str]  # expected prediction file names that were absent
    extra: list[str]  # prediction file names that match no ground-truth image

    @property
    def total(self) -> np.ndarray:
        return self.confusions.sum(axis=0)


def prediction_path(pred_dir: Path, sample: Sample) -> Path:
    """Predictions share the ground-truth image's stem."""
    return pred_dir / (Path(sample.image_path).stem + PRED_SUFFIX)


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    more = len(names) - NAMES_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def match_predictions(
    pred_dir: Path, samples: list[Sample], allow_missing: bool
) -> tuple[list[tuple[Sample, Path]], list[str], list[str]]:
    """(sample, prediction) pairs, missing prediction names and extra prediction names.

    Other files in the folder (refine.json, score arrays) are not predictions and are ignored.
    """
    if not pred_dir.is_dir():
        raise ConstructError(f"{pred_dir}: prediction folder not found")
    pairs: list[tuple[Sample, Path]] = []
    missing: list[str] = []
    for sample in samples:
        path = prediction_path(pred_dir, sample)
        if path.is_file():
            pairs.append((sample, path))
        else:
            missing.append(path.name)
    expected = {prediction_path(pred_dir, s).name for s in samples}
    extra = sorted(p.name for p in pred_dir.glob("*" + PRED_SUFFIX) if p.name not in expected)
    if missing and not allow_missing:
        raise ConstructError(
            f"{pred_dir}: {len(missing)} of {len(samples)} predictions missing "
            f"({_names(missing)}); use --allow-missing to score the rest"
        )
    if not pairs:
        raise ConstructError(f"{pred_dir}: no predictions for any of the {len(samples)} images")
    return pairs, missing, extra


def collect(
    pred_dir: Path,
    samples: list[Sample],
    classes: ClassSet,
    allow_missing: bool = False,
    progress: bool = True,
) -> Collected:
    """Read every (ground truth, prediction) pair and count its confusion matrix.

    `read_mask` rejects, naming the file, a prediction whose size differs from its ground truth
    or that holds indices outside the class set.
    """
    if not samples:
        raise ConstructError("the split has no images to evaluate")
    pairs, missing, extra = match_predictions(pred_dir, samples, allow_missing)
    n = classes.n_mask_values
    confusions = np.zeros((len(pairs), n, n), dtype=np.int64)
    for i, (sample, path) in enumerate(tqdm(pairs, desc="eval", unit="img", disable=not progress)):
        if sample.mask_path is None:
            raise ConstructError(f"{sample.image_path}: no ground-truth mask for this image")
        gt = read_mask(sample.mask_path, classes)
        pred = read_mask(path, classes, shape=gt.shape)
        confusions[i] = confusion_matrix(gt, pred, n)
    return Collected([s for s, _ in pairs], confusions, missing, extra)
