"""A fake predictor that reads the synthetic slides' colours: known answers, no model."""

from __future__ import annotations

import numpy as np
import torch

from construct.data.classes import BCSS, ClassSet
from construct.slide.synthetic import class_colors


class ColourPredictor:
    """Scores each pixel by its (5x5-smoothed) colour's distance to each synthetic class colour; counts
    the tiles it sees. Satisfies construct.inference.parts.Predictor."""

    def __init__(self, classes: ClassSet = BCSS, tile_size: int = 224):
        self.classes, self.tile_size, self.fingerprint = classes, tile_size, "colour-predictor"
        self.device = torch.device("cpu")
        colours = class_colors(classes)
        order = [c.mask_index for c in classes.classes] + [classes.background_index]
        self.ref = torch.tensor([colours[i] for i in order], dtype=torch.float32) / 255
        self.seen = 0

    def scores(self, images01: torch.Tensor, gate: str, labels=None, pred_threshold: float = 0.5):
        self.seen += len(images01)
        x = torch.nn.functional.avg_pool2d(images01, 5, 1, 2, count_include_pad=False)
        d = ((x[:, None] - self.ref[None, :, :, None, None]) ** 2).sum(2)
        return torch.softmax(-d * 200, dim=1), torch.ones(len(images01), len(self.classes))


def grid_truth(regions: np.ndarray, scale: float, shape: tuple[int, int]) -> np.ndarray:
    """The level-0 known regions sampled at the grid's pixel centres."""
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * scale).astype(int), regions.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * scale).astype(int), regions.shape[1] - 1)
    return regions[np.ix_(rows, cols)]
