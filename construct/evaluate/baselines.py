"""Trivial baselines scored on the same split and protocol as a prediction, so a number has a floor.

- `all-background`: every pixel predicted background.
- `labelled-everywhere`: each tile's ground-truth image labels (the classes present in its mask, what
  the `gt` gate of `construct refine` is given) spread over the whole tile. With several labels a pixel
  cannot hold them all, so each pixel counts 1/k towards each of its tile's k labelled classes: the
  expected confusion of drawing one labelled class per pixel at random, with no randomness in the score.
  A tile with no tissue label is predicted background.
"""

from __future__ import annotations

import numpy as np

from construct.data.classes import ClassSet
from construct.data.dataset import Sample, labels_from_mask, read_mask
from construct.errors import ConstructError
from construct.metrics import Scores, apply_protocol, scores

BASELINES = ("all-background", "labelled-everywhere")


def baseline_confusions(gt: np.ndarray, classes: ClassSet) -> dict[str, np.ndarray]:
    """Confusion matrices (float, rows = ground truth) of each baseline on one ground-truth mask."""
    n, bg = classes.n_mask_values, classes.background_index
    counts = np.bincount(np.asarray(gt, dtype=np.int64).ravel(), minlength=n)[:n].astype(np.float64)
    background = np.zeros((n, n))
    background[:, bg] = counts
    present = [c.mask_index for c, on in zip(classes.classes, labels_from_mask(gt, classes)) if on]
    labelled = np.zeros((n, n))
    for j in present or [bg]:
        labelled[:, j] += counts / max(1, len(present))
    return {"all-background": background, "labelled-everywhere": labelled}


def baseline_scores(samples: list[Sample], classes: ClassSet, protocol: str) -> dict[str, Scores]:
    """Each baseline's scores over the samples' ground-truth masks, under `protocol`."""
    totals = {name: np.zeros((classes.n_mask_values,) * 2) for name in BASELINES}
    for sample in samples:
        if sample.mask_path is None:
            raise ConstructError(f"{sample.image_path}: no ground-truth mask for this image")
        for name, conf in baseline_confusions(read_mask(sample.mask_path, classes), classes).items():
            totals[name] += conf
    return {name: scores(apply_protocol(conf, protocol, classes.background_index), classes)
            for name, conf in totals.items()}
