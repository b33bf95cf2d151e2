"""Tile sources: where the inference pipeline's tiles come from (a dataset split, a folder, a slide).

A source yields batches of decoded tiles at the predictor's tile size. It may skip tiles a sink already
holds (resume). Sources know nothing of models: data flows source → predictor → sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Tile:
    stem: str  # unique within the source: the file stem, or the tile's grid position on a slide
    image: np.ndarray  # (H, W, 3) uint8 RGB at the predictor's tile size
    labels: np.ndarray | None = None  # (C,) uint8 image labels, when the source has them (gates labels/gt)
    mask: np.ndarray | None = None  # (H, W) uint8 ground-truth mask indices, when the source has them
    origin: tuple[int, int] | None = None  # slides: (x, y) of the tile's top-left on the tiling grid


class TileSource(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, skip: Callable[[str], bool] | None = None) -> Iterator[list[Tile]]:
        """Tiles in a fixed order, `batch_size` at a time, leaving out those whose stem `skip` accepts.
        A file that cannot be read raises a one-line ConstructError naming it."""
        ...
