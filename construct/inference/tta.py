"""Test-time augmentation: variants of a batch of images and the exact undoing of their geometry.

The paper's six variants are horizontal flip x brightness {0.9, 1.0, 1.1}, brightness scaling the
pixel intensities in [0, 1] (clamped) before each backbone's own normalisation. Variants are laid out
image-major, so the variants of image b are rows b*V .. b*V + V - 1 of the expanded batch.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

PAPER_BRIGHTNESS = (0.9, 1.0, 1.1)
PAPER_FLIPS = (False, True)


@dataclass(frozen=True)
class Variant:
    flip: bool  # horizontal flip (last axis)
    brightness: float  # factor on pixel intensities in [0, 1]

    def to_dict(self) -> dict:
        return asdict(self)


def paper_variants() -> tuple[Variant, ...]:
    return tuple(Variant(f, b) for f in PAPER_FLIPS for b in PAPER_BRIGHTNESS)


IDENTITY: tuple[Variant, ...] = (Variant(False, 1.0),)


def variants_for(tta: bool) -> tuple[Variant, ...]:
    return paper_variants() if tta else IDENTITY


def apply_variant(images01: torch.Tensor, v: Variant) -> torch.Tensor:
    x = images01 if v.brightness == 1.0 else (images01 * v.brightness).clamp_(0.0, 1.0)
    return x.flip(-1) if v.flip else x


def expand(images01: torch.Tensor, variants: tuple[Variant, ...]) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] → (B * V, 3, H, W), image-major."""
    if variants == IDENTITY:
        return images01
    return torch.stack([apply_variant(images01, v) for v in variants], dim=1).flatten(0, 1)


def undo(maps: torch.Tensor, variants: tuple[Variant, ...]) -> torch.Tensor:
    """(B * V, ..., W) maps computed on `expand`ed images → (B, V, ..., W) in the original geometry.

    A flip is its own inverse, so flipped variants are flipped back exactly (no resampling)."""
    per_image = maps.unflatten(0, (-1, len(variants)))
    if not any(v.flip for v in variants):
        return per_image
    return torch.stack(
        [per_image[:, i].flip(-1) if v.flip else per_image[:, i] for i, v in enumerate(variants)], dim=1
    )
