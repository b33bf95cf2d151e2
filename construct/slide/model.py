"""The model a slide is segmented with, loaded from a run folder as a Predictor.

A student run (`construct distill`): the student network alone, fast. A head run (`construct train`):
live CONCH (rebuilt from the run's recorded weights, fingerprint-checked, as refine does) and the head.
TTA is optional for both (6-way for the head, flips for a student). The tiling resolution is the one
the training tiles had, recorded by `extract --mpp` in the store and carried into the head run; a
student takes its teacher run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from construct.backbones.recipe import BackboneRecipe
from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.head.io import load_head, read_run_config
from construct.inference.head import HeadPredictor, TapBackbone
from construct.inference.parts import Predictor
from construct.inference.runs import STUDENT_KIND, head_run_meta, load_conch, requested_precision, run_kind
from construct.inference.student import StudentPredictor
from construct.inference.tta import variants_for
from construct.runtime import resolve_device, resolve_precision


@dataclass
class LoadedModel:
    predictor: Predictor
    kind: str  # "head" or "student"
    mpp: float | None  # µm/px of the training tiles, when recorded
    random_weights: bool
    recipes: list[BackboneRecipe]  # backbones run live (CONCH for a head run; none for a student)

    def describe(self, run: Path, tta: bool) -> dict:
        """What summary.json records of the model."""
        return {"run": str(Path(run).resolve()), "kind": self.kind, "fingerprint": self.predictor.fingerprint,
                "backbones": {r.family: r.fingerprint for r in self.recipes},
                "random_weights": self.random_weights, "tta": tta, "precision": self.predictor.precision}


def run_mpp(meta: dict) -> float | None:
    value = meta.get("store", {}).get("preprocessing", {}).get("mpp")
    return float(value) if value is not None else None


def load_model(run: Path, tta: bool = False, device: str = "auto", precision: str | None = None,
               head: str = "best", conch_spec: str | None = None, conch: TapBackbone | None = None) -> LoadedModel:
    """A run's predictor. `head` picks best or last weights; `precision` (auto or None: the run's own if it
    was given one, else bf16 where the device computes it natively) applies to both kinds; `conch_spec` and
    `conch` (passed in instead of being rebuilt from the run's record) to head runs."""
    run = Path(run)
    meta = read_run_config(run)
    precision = resolve_precision(precision, resolve_device(device), requested_precision(meta))
    if run_kind(meta) == STUDENT_KIND:
        return _student(run, tta, device, head, precision)
    meta, classes, recipes, preprocessing = head_run_meta(run, "slide")
    model, _ = load_head(run, head)
    backbone = load_conch(recipes["conch"], conch_spec, conch)
    predictor = HeadPredictor(backbone, model, classes, int(preprocessing["tile_size"]), variants_for(tta),
                              precision, resolve_device(device))
    random_weights = bool(recipes["conch"].random_weights or meta["store"].get("random_weights", False))
    return LoadedModel(predictor, "head", run_mpp(meta), random_weights, [recipes["conch"]])


def _student(run: Path, tta: bool, device: str, which: str, precision: str) -> LoadedModel:
    from construct.distill.io import load_student

    student, meta = load_student(run, which)
    predictor = StudentPredictor(student, ClassSet.from_dict(meta["classes"]), int(meta["tile_size"]),
                                 flip_tta=tta, device=resolve_device(device), precision=precision)
    try:  # the student learnt from its teacher's tiles
        mpp = run_mpp(read_run_config(Path(meta["teacher"]["run"])))
    except (ConstructError, KeyError, TypeError):
        mpp = None
    return LoadedModel(predictor, STUDENT_KIND, mpp, bool(meta.get("random_weights", False)), [])
