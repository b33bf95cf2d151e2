"""The student predictor: a distilled segmentation network, no CONCH. Softmax scores, optional flip-TTA.

Gates mean what they mean for the head: `labels`/`gt` keep the tile's labelled classes, `none` all of
them, `pred` those whose score somewhere in the tile (max over pixels) passes the threshold (the most
confident class when none does). Gated-out classes are zeroed; background (the last channel) stays.
"""

from __future__ import annotations

import torch
from torch import nn

from construct.backbones.weights import module_fingerprint
from construct.data.classes import ClassSet
from construct.runtime import autocast


def predicted_gate(probs: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, C) gate from softmax scores (B, C + 1, H, W): a class's max over pixels above `threshold`."""
    peak = probs[:, :-1].flatten(2).max(dim=2).values
    gate = peak > threshold
    empty = ~gate.any(dim=1)
    gate[empty, peak[empty].argmax(dim=1)] = True
    return gate.to(probs.dtype)


class StudentPredictor:
    def __init__(self, student: nn.Module, classes: ClassSet, tile_size: int, flip_tta: bool = False,
                 device: torch.device | str = "cpu", precision: str = "fp32"):
        self.device = torch.device(device)
        self.student = student.to(self.device).eval()
        self.classes = classes
        self.tile_size = tile_size
        self.flip_tta = flip_tta
        self.precision = precision
        self.fingerprint = module_fingerprint(student)

    @torch.no_grad()
    def probabilities(self, images01: torch.Tensor) -> torch.Tensor:
        probs = self._softmax(images01)
        if self.flip_tta:
            probs = 0.5 * (probs + self._softmax(images01.flip(-1)).flip(-1))
        return probs

    def _softmax(self, images01: torch.Tensor) -> torch.Tensor:
        """The network at the predictor's precision; the softmax in fp32."""
        with autocast(images01.device, self.precision):
            logits = self.student(images01)
        return logits.float().softmax(dim=1)

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        probs = self.probabilities(images01)
        if gate == "pred":
            g = predicted_gate(probs, pred_threshold)
        elif gate == "none":
            g = torch.ones(probs.shape[0], probs.shape[1] - 1, device=probs.device)
        else:
            if labels is None:
                raise ValueError(f"gate {gate!r} needs labels")
            g = labels.to(probs.device, torch.float32)
        keep = torch.cat([g, torch.ones_like(g[:, :1])], dim=1)
        return probs * keep[:, :, None, None], g
