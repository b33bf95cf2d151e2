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
from construct.inference.runs import STUDENT_KIND, head_run_meta, load_conch, run_kind
from construct.inference.student import StudentPredictor
from construct.inference.tta import variants_for
from construct.runtime import resolve_device

DEFAULT_STRIDE = 32  # smp encoders' output stride unless they say otherwise


@dataclass
class LoadedModel:
    predictor: Predictor
    kind: str  # "head" or "student"
    mpp: float | None  # µm/px of the training tiles, when recorded
    random_weights: bool
    recipes: list[BackboneRecipe]  # backbones run live (CONCH for a head run; none for a student)
    trained_tile_size: int  # the training tiles' side; predictor.tile_size is the window slides are read in

    @property
    def default_overlap(self) -> int:
        """A quarter of the training tile, also for larger windows: the overlap hides the border where the
        model lacks context, whose width is the model's, not the window's."""
        return self.trained_tile_size // 4

    def describe(self, run: Path, tta: bool) -> dict:
        """What summary.json records of the model."""
        return {"run": str(Path(run).resolve()), "kind": self.kind, "fingerprint": self.predictor.fingerprint,
                "backbones": {r.family: r.fingerprint for r in self.recipes},
                "random_weights": self.random_weights, "tta": tta}


def run_mpp(meta: dict) -> float | None:
    value = meta.get("store", {}).get("preprocessing", {}).get("mpp")
    return float(value) if value is not None else None


def load_model(run: Path, tta: bool = False, device: str = "auto", precision: str | None = None,
               head: str = "best", conch_spec: str | None = None, conch: TapBackbone | None = None,
               tile_size: int | None = None) -> LoadedModel:
    """A run's predictor. `head` picks best or last weights; `precision`, `conch_spec` and `conch` (passed
    in instead of being rebuilt from the run's record) apply to head runs. `tile_size`: the window a student
    (fully convolutional) is run on, a multiple of its output stride; a head run takes only its own."""
    run = Path(run)
    if run_kind(read_run_config(run)) == STUDENT_KIND:
        return _student(run, tta, device, head, tile_size)
    meta, classes, recipes, preprocessing = head_run_meta(run, "slide")
    trained = int(preprocessing["tile_size"])
    if tile_size is not None and tile_size != trained:
        raise ConstructError(f"--tile-size {tile_size}: a head run reads only its training tile ({trained} px, "
                             f"CONCH's patch grid); larger windows need a student run (`construct distill`)")
    model, _ = load_head(run, head)
    backbone = load_conch(recipes["conch"], conch_spec, conch)
    predictor = HeadPredictor(backbone, model, classes, trained, variants_for(tta),
                              precision or str(preprocessing.get("precision", "fp32")), resolve_device(device))
    random_weights = bool(recipes["conch"].random_weights or meta["store"].get("random_weights", False))
    return LoadedModel(predictor, "head", run_mpp(meta), random_weights, [recipes["conch"]], trained)


def student_stride(student) -> int:
    """The factor a student's input sides must be a multiple of (its encoder's output stride)."""
    return int(getattr(student.net.encoder, "output_stride", DEFAULT_STRIDE))


def _student(run: Path, tta: bool, device: str, which: str, tile_size: int | None) -> LoadedModel:
    from construct.distill.io import load_student

    student, meta = load_student(run, which)
    trained = int(meta["tile_size"])
    if tile_size is not None:
        stride = student_stride(student)
        if tile_size < trained or tile_size % stride:
            raise ConstructError(f"--tile-size {tile_size}: expected a multiple of {stride} px (the student's "
                                 f"stride), at least its training tile ({trained} px)")
    predictor = StudentPredictor(student, ClassSet.from_dict(meta["classes"]), tile_size or trained,
                                 flip_tta=tta, device=resolve_device(device))
    try:  # the student learnt from its teacher's tiles
        mpp = run_mpp(read_run_config(Path(meta["teacher"]["run"])))
    except (ConstructError, KeyError, TypeError):
        mpp = None
    return LoadedModel(predictor, STUDENT_KIND, mpp, bool(meta.get("random_weights", False)), [], trained)
