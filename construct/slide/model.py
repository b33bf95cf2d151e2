"""The model a slide is segmented with, loaded from a run folder as a Predictor.

A ConStruct head run: live CONCH (rebuilt from the run's recorded weights, fingerprint-checked, as
refine does), the head, optional TTA. The tiling resolution is the one the run's training tiles had,
recorded by `extract --mpp` in the store and carried into the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from construct.backbones.weights import fingerprint
from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.head.io import load_head
from construct.head.model import ConStructHead
from construct.refine.config import RefineConfig
from construct.refine.infer import TapBackbone, tile_scores
from construct.refine.pipeline import _load_conch, _run_meta
from construct.refine.tta import Variant, variants_for
from construct.runtime import resolve_device


@dataclass
class HeadPredictor:
    """The ConStruct head with live CONCH (and TTA), satisfying construct.inference.parts.Predictor."""

    conch: TapBackbone
    head: ConStructHead
    classes: ClassSet
    tile_size: int
    fingerprint: str
    variants: tuple[Variant, ...]
    precision: str
    device: torch.device

    def scores(self, images01: torch.Tensor, gate: str, labels: torch.Tensor | None = None,
               pred_threshold: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
        return tile_scores(images01.to(self.device), self.conch, self.head, self.variants, gate, labels,
                           pred_threshold, self.precision)


@dataclass
class LoadedModel:
    predictor: HeadPredictor
    mpp: float | None  # µm/px of the run's training tiles, when recorded
    random_weights: bool


def run_mpp(meta: dict) -> float | None:
    value = meta.get("store", {}).get("preprocessing", {}).get("mpp")
    return float(value) if value is not None else None


def load_model(run: Path, tta: bool = False, device: str = "auto", precision: str | None = None,
               head: str = "best", conch_spec: str | None = None, conch: TapBackbone | None = None) -> LoadedModel:
    """A run's predictor; `conch` may be passed in instead of being rebuilt from the run's record."""
    cfg = RefineConfig(run=Path(run), conch=conch_spec)
    meta, classes, recipes, preprocessing = _run_meta(cfg)
    if "head" not in meta:
        raise ConstructError(f"{run}: not a ConStruct head run (no head config)")
    dev = resolve_device(device)
    model, _ = load_head(run, head)
    head_fp = fingerprint(iter(model.state_dict().items()))
    conch = _load_conch(cfg, recipes["conch"], conch)
    if hasattr(conch, "to"):
        conch.to(dev)
    predictor = HeadPredictor(
        conch=conch, head=model.to(dev).eval(), classes=classes, tile_size=int(preprocessing["tile_size"]),
        fingerprint=f"head:{head_fp[:16]}+conch:{recipes['conch'].fingerprint[:16]}", variants=variants_for(tta),
        precision=precision or str(preprocessing.get("precision", "fp32")), device=dev)
    random_weights = bool(recipes["conch"].random_weights or meta["store"].get("random_weights", False))
    return LoadedModel(predictor, run_mpp(meta), random_weights)
