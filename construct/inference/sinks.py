"""Sinks: palette PNG masks per tile (refine), optionally with float16 score arrays; a confusion matrix;
results kept in memory (the Python API).

The score store sink (distill's teacher targets) is in construct.inference.score_store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from construct.atomic import atomic_output
from construct.data.classes import ClassSet
from construct.data.dataset import write_mask
from construct.data.sources import Tile
from construct.head.scores import mask_index_lut
from construct.metrics import confusion_matrix


def save_scores(path: Path, scores: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, scores.astype(np.float16))


class MaskSink:
    """`<stem>.png` palette masks in the dataset's mask indices and, with `scores_dir`, `<stem>.npy` float16
    scores (C + 1, H, W). The PNG is written last and atomically: a PNG on disk means the tile is complete.
    `resume` False treats every tile as to do (the caller has checked the folder holds nothing of ours)."""

    def __init__(self, out: Path, classes: ClassSet, scores_dir: Path | None = None, resume: bool = True):
        self.out = Path(out)
        self.classes = classes
        self.lut = mask_index_lut(classes)
        self.scores_dir = scores_dir
        self.resume = resume

    def done(self, stem: str) -> bool:
        return (self.resume and (self.out / f"{stem}.png").is_file()
                and (self.scores_dir is None or (self.scores_dir / f"{stem}.npy").is_file()))

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        if self.scores_dir is not None:
            save_scores(self.scores_dir / f"{tile.stem}.npy", scores)
        write_mask(self.out / f"{tile.stem}.png", self.lut[labels], self.classes)

    def close(self) -> None:
        """Nothing to flush: every tile is complete on disk once written."""


class ConfusionSink:
    """Accumulates a confusion matrix of each tile's labels against its ground-truth mask (model selection
    without files); the source must carry masks."""

    def __init__(self, classes: ClassSet):
        self.lut = mask_index_lut(classes)
        n = classes.n_mask_values
        self.matrix = np.zeros((n, n), dtype=np.int64)

    def done(self, stem: str) -> bool:
        return False

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        if tile.mask is None:
            raise ValueError(f"tile {tile.stem} has no ground-truth mask to score against")
        self.matrix += confusion_matrix(tile.mask, self.lut[labels], self.matrix.shape[0])

    def close(self) -> None:
        """Nothing to flush: `matrix` holds the result."""


class MemorySink:
    """Keeps each tile's scores (C + 1, H, W) and labels (H, W), by stem, in `results`."""

    def __init__(self):
        self.results: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def done(self, stem: str) -> bool:
        return stem in self.results

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        self.results[tile.stem] = (scores, labels)

    def close(self) -> None:
        """Nothing to flush: `results` holds everything."""
