"""The head predictor: live inference for a batch of tiles: TTA variants → CONCH taps → head CAMs → gated score maps.

Per variant and CAM level: ReLU and per-class min-max at the level's resolution (`level_maps`, as in
training), the flip undone, then the variants averaged; the averaged levels are upsampled (bilinear)
to the image size and fused with the run's weights (`fuse_levels`). Flip-undo, averaging, bilinear
upsampling and fusion are linear and commute, so this equals fusing every variant at full resolution
first (the paper's order) at a sixth of the upsampling cost. Gating multiplies each class map by 0 or
1, which commutes with all of them too, so it is applied once, in `score_maps`, which also adds the
background channel (1 - max)^10.
"""

from __future__ import annotations

from typing import Protocol

import torch

from construct.backbones.weights import module_fingerprint
from construct.data.classes import ClassSet
from construct.head.model import ConStructHead, HeadOutput
from construct.head.scores import score_maps
from construct.inference.tta import Variant, expand, undo
from construct.runtime import autocast


class TapBackbone(Protocol):
    def taps(self, images01: torch.Tensor, with_embedding: bool = True) -> dict[str, torch.Tensor]: ...


def variant_cams(
    images01: torch.Tensor, conch: TapBackbone, head: ConStructHead, variants: tuple[Variant, ...],
    precision: str = "fp32",
) -> tuple[dict[int, torch.Tensor], HeadOutput]:
    """images01 (B, 3, H, W) → per CAM level, the ReLU'd, min-maxed CAMs of every variant back in the
    original geometry, (B, V, C, h_k, w_k), and the head's output on the (B * V) variants."""
    x = expand(images01, variants)
    with torch.no_grad():
        with autocast(x.device, precision):
            taps = conch.taps(x, with_embedding=False)
        out = head({k: taps[k].float() for k in head.input_taps})  # the head runs in fp32, as in training
        maps = {k: undo(m, variants) for k, m in head.level_maps(out).items()}
    return maps, out


def predicted_gate(head: ConStructHead, out: HeadOutput, n_variants: int, threshold: float) -> torch.Tensor:
    """(B, C) gate from the head's classifier: sigmoid of the mean CAM-level logit, averaged over the
    variants, above `threshold`; an image where no class passes keeps its most probable class."""
    logits = torch.stack([out.logits[k] for k in head.config.cam_levels]).mean(dim=0)
    probs = torch.sigmoid(logits.float()).unflatten(0, (-1, n_variants)).mean(dim=1)
    gate = probs > threshold
    empty = ~gate.any(dim=1)
    gate[empty, probs[empty].argmax(dim=1)] = True
    return gate.to(probs.dtype)


@torch.no_grad()
def tile_scores(
    images01: torch.Tensor, conch: TapBackbone, head: ConStructHead, variants: tuple[Variant, ...],
    gate: str, labels: torch.Tensor | None = None, pred_threshold: float = 0.5, precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B, C + 1, H, W), background last, and the (B, C) gate used.

    gate: `labels`/`gt` use `labels` (B, C) (from file names or ground-truth masks), `pred` the head's
    classifier, `none` keeps every class."""
    b, _, h, w = images01.shape
    if h != w:
        raise ValueError(f"tiles must be square, got {h}x{w}")
    maps, out = variant_cams(images01, conch, head, variants, precision)
    cam = head.fuse_levels({k: m.mean(dim=1) for k, m in maps.items()}, size=h)
    if gate == "pred":
        g = predicted_gate(head, out, len(variants), pred_threshold)
    elif gate == "none":
        g = torch.ones(cam.shape[:2], device=cam.device)
    else:
        if labels is None:
            raise ValueError(f"gate {gate!r} needs labels")
        g = labels.to(cam.device, torch.float32)
    return score_maps(cam, g), g


class HeadPredictor:
    """The ConStruct head over live CONCH taps, with TTA: the stage-1 predictor."""

    def __init__(self, conch: TapBackbone, head: ConStructHead, classes: ClassSet, tile_size: int,
                 variants: tuple[Variant, ...], precision: str = "fp32", device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.conch = conch.to(self.device) if hasattr(conch, "to") else conch
        self.head = head.to(self.device).eval()
        self.classes = classes
        self.tile_size = tile_size
        self.variants = variants
        self.precision = precision
        self.fingerprint = module_fingerprint(head)

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        return tile_scores(images01, self.conch, self.head, self.variants, gate, labels, pred_threshold,
                           self.precision)
