"""From fused CAMs to per-pixel scores and masks: label gating and the background channel."""

from __future__ import annotations

import numpy as np
import torch

from construct.data.classes import ClassSet

BACKGROUND_POWER = 10  # background = (1 - max_c M_c) ** 10, as in the paper


def score_maps(cam: torch.Tensor, gate: torch.Tensor | None = None, power: float = BACKGROUND_POWER) -> torch.Tensor:
    """cam (B, C, H, W) in [0, 1], gate (B, C) in {0, 1} → scores (B, C + 1, H, W), background last."""
    if gate is not None:
        cam = cam * gate.to(cam.dtype)[:, :, None, None]
    background = (1 - cam.max(dim=1, keepdim=True).values).clamp(min=0) ** power
    return torch.cat([cam, background], dim=1)


def mask_index_lut(classes: ClassSet) -> np.ndarray:
    """Score channel → mask index (classes in order, then background)."""
    return np.array([c.mask_index for c in classes.classes] + [classes.background_index], dtype=np.uint8)


def scores_to_masks(scores: torch.Tensor, classes: ClassSet) -> np.ndarray:
    """Argmax over channels, mapped to the dataset's mask indices: (B, H, W) uint8."""
    return mask_index_lut(classes)[scores.argmax(dim=1).cpu().numpy()]
