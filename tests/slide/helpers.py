"""Known answers for the synthetic slides."""

from __future__ import annotations

import numpy as np


def grid_truth(regions: np.ndarray, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """The level-0 known regions sampled at the grid's pixel centres."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * scale).astype(int), regions.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * scale).astype(int), regions.shape[1] - 1)
    return regions[np.ix_(rows, cols)]
