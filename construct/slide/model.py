"""The model a slide is segmented with, loaded from a run folder as a Predictor.

A ConStruct head run: live CONCH (rebuilt from the run's recorded weights, fingerprint-checked, as
refine does), the head, optional TTA. The tiling resolution is the one the run's training tiles had,
recorded by `extract --mpp` in the store and carried into the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from construct.head.io import load_head
from construct.inference.head import HeadPredictor, TapBackbone
from construct.inference.parts import Predictor
from construct.inference.tta import variants_for
from construct.refine.config import RefineConfig
from construct.refine.pipeline import _load_conch, _run_meta
from construct.runtime import resolve_device


@dataclass
class LoadedModel:
    predictor: Predictor
    mpp: float | None  # µm/px of the run's training tiles, when recorded
    random_weights: bool
    recipes: list  # backbone recipes, for the random-weights warning

    def describe(self, run: Path, tta: bool) -> dict:
        """What summary.json records of the model."""
        return {"run": str(Path(run).resolve()), "fingerprint": self.predictor.fingerprint,
                "backbones": {r.family: r.fingerprint for r in self.recipes},
                "random_weights": self.random_weights, "tta": tta}


def run_mpp(meta: dict) -> float | None:
    value = meta.get("store", {}).get("preprocessing", {}).get("mpp")
    return float(value) if value is not None else None


def load_model(run: Path, tta: bool = False, device: str = "auto", precision: str | None = None,
               head: str = "best", conch_spec: str | None = None, conch: TapBackbone | None = None) -> LoadedModel:
    """A run's predictor; `conch` may be passed in instead of being rebuilt from the run's record."""
    cfg = RefineConfig(run=Path(run), conch=conch_spec)
    meta, classes, recipes, preprocessing = _run_meta(cfg)
    model, _ = load_head(run, head)
    conch = _load_conch(cfg, recipes["conch"], conch)
    predictor = HeadPredictor(conch, model, classes, int(preprocessing["tile_size"]), variants_for(tta),
                              precision or str(preprocessing.get("precision", "fp32")), resolve_device(device))
    random_weights = bool(recipes["conch"].random_weights or meta["store"].get("random_weights", False))
    return LoadedModel(predictor, run_mpp(meta), random_weights, [recipes["conch"]])
