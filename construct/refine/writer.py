"""The per-tile tail of refine: scores → labels (Dense CRF or argmax) → palette PNG (+ score array).

Runs in CRF worker processes (or inline), so it imports neither torch nor the models. The PNG is
written last and atomically: a PNG on disk means the tile is complete, which is what resuming checks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from construct.atomic import atomic_output
from construct.data.classes import ClassSet
from construct.data.dataset import write_mask
from construct.refine.crf import crf_refine


@dataclass(frozen=True)
class TileTask:
    image: np.ndarray  # (H, W, 3) uint8, the tile as read (no TTA)
    scores: np.ndarray  # (C + 1, H, W) float32, background last, gated
    mask_path: Path
    scores_path: Path | None  # where to save float16 scores, or None


def save_scores(path: Path, scores: np.ndarray) -> None:
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.save(f, scores.astype(np.float16))


def finish_tile(task: TileTask, lut: np.ndarray, classes: ClassSet, use_crf: bool) -> Path:
    """Write one tile's mask (mask indices via `lut`, channel → index) and, optionally, its scores."""
    if task.scores_path is not None:
        save_scores(task.scores_path, task.scores)
    labels = crf_refine(task.image, task.scores) if use_crf else task.scores.argmax(axis=0)
    write_mask(task.mask_path, lut[labels], classes)
    return task.mask_path
