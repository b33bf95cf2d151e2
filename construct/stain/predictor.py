"""Stain normalisation in front of any Predictor: images are mapped to the run's reference colours
before the inner predictor sees them (the normaliser is fitted once per input, outside)."""

from __future__ import annotations

import torch

from construct.inference.parts import Predictor
from construct.stain.normalize import StainNormalizer


class StainNormalizedPredictor:
    """A Predictor whose inputs are stain-normalised first; everything else is the inner predictor's."""

    def __init__(self, inner: Predictor, normalizer: StainNormalizer):
        self.inner = inner
        self.normalizer = normalizer
        self.classes = inner.classes
        self.tile_size = inner.tile_size
        self.fingerprint = inner.fingerprint
        self.device = inner.device

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inner.scores(self.normalizer(images01), gate, labels, pred_threshold)


def with_stain_norm(predictor: Predictor, normalizer: StainNormalizer | None) -> Predictor:
    """`predictor` behind `normalizer`, or unchanged when there is none."""
    return predictor if normalizer is None else StainNormalizedPredictor(predictor, normalizer)
