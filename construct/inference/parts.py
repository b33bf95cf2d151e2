"""The contracts between the pipeline's parts. Sources are in construct.data.sources."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from construct.data.classes import ClassSet
from construct.data.sources import Tile


class Predictor(Protocol):
    """Turns images into per-pixel class scores at tile resolution: the ConStruct head with live CONCH
    (and TTA), or a student network."""

    classes: ClassSet
    tile_size: int
    fingerprint: str  # of the weights: recorded by sinks so outputs can be traced to a model
    device: torch.device  # where `scores` wants its images

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        """images01 (B, 3, H, W) float in [0, 1] → scores (B, C + 1, H, W) in [0, 1], background last,
        and the (B, C) gate used (`labels`/`gt`: from `labels`; `pred`: the model's own image-level
        classifier; `none`: every class)."""
        ...


class Sink(Protocol):
    """Where results go: PNG masks, a score store, a stitched slide."""

    def done(self, stem: str) -> bool:
        """True when this tile is already written (resume)."""
        ...

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        """scores (C + 1, H, W) float32, background last; labels (H, W) uint8 channel index (0..C,
        C = background), after the CRF or argmax. Mapping to the dataset's mask indices is the sink's."""
        ...

    def close(self) -> None:
        """Finish: flush, write metadata, mark complete."""
        ...
