"""A run folder → a Predictor: the one place refine, slide, distill's teacher targets and the Python API
build their model.

The run's kind decides the predictor. A head run (`construct train`) gets live CONCH, rebuilt from the
weights its store recorded and checked to be those weights, under the head, with 6-way TTA and the Dense
CRF by default; a student run (`construct distill`) gets the student network alone, no TTA (flips when
asked) and argmax. What decides the outputs (fingerprints, TTA variants, precision) is known before the
backbone is built: `settings` is what refine.json and score stores compare on resume, and the predictor
itself is built on first use, so a resumed command with nothing left to do never builds CONCH.

Every choice a caller can make is a field of `PredictorOptions`, resolved here once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.registry import create_backbone
from construct.backbones.weights import module_fingerprint
from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.head.io import load_head
from construct.head.model import ConStructHead
from construct.head.scores import BACKGROUND_POWER
from construct.inference.head import HeadPredictor, TapBackbone
from construct.inference.parts import Predictor
from construct.inference.student import StudentPredictor
from construct.inference.tta import variants_for
from construct.runs import STUDENT_KIND, WHICH, head_run_meta, read_run_config, requested_precision, run_kind, run_mpp
from construct.runtime import resolve_device, resolve_precision
from construct.student.io import load_student

DEFAULT_STRIDE = 32  # smp encoders' output stride unless they say otherwise
STUDENT_FLIP_VARIANTS = 2  # a student's TTA: the image and its horizontal flip


@dataclass(frozen=True)
class PredictorOptions:
    """How to run a run's model. None means the run's own default."""

    head: str = "best"  # which weights: best on validation (falling back to last) or last
    device: str = "auto"  # auto, cpu, cuda, cuda:1, ...
    # auto (or None): the run's own --precision if it was given one, else bf16 where the device computes it
    # natively (construct.runtime.resolve_precision). Head runs: CONCH's forward; students: the network's.
    precision: str | None = "auto"
    tta: bool | None = None  # None: 6-way for a head run, none for a student (True: + its flip)
    conch: str | None = None  # CONCH weights when not where the run recorded them (fingerprint-checked)
    tile_size: int | None = None  # window side a student (fully convolutional) runs on; None: its training tile


@dataclass
class LoadedModel:
    """A run's model, described; `predictor` builds it on first use."""

    run: Path
    kind: str  # "head" or "student"
    meta: dict  # the run's config.json
    classes: ClassSet
    tile_size: int  # px of the square tiles the predictor takes (a student's window may exceed its training tile)
    trained_tile_size: int  # px of the training tiles
    mpp: float | None  # µm/px of the training tiles, when recorded (a student: its teacher's)
    random_weights: bool  # a backbone ran on random weights: the outputs are meaningless
    backbones: dict[str, BackboneRecipe]  # backbones run live (CONCH for a head run; none for a student)
    fingerprint: str  # of the head's or student's weights
    tta: bool
    crf: bool  # the kind's default labelling: the Dense CRF (head) or argmax (student)
    n_variants: int  # forwards per image
    settings: dict  # what decides the outputs, compared when resuming into existing outputs
    options: PredictorOptions
    build: Callable[[], Predictor] = field(repr=False)

    @cached_property
    def predictor(self) -> Predictor:
        return self.build()

    @property
    def default_overlap(self) -> int:
        """A quarter of the training tile, also for larger windows: the overlap hides the border where the
        model lacks context, whose width is the model's, not the window's."""
        return self.trained_tile_size // 4

    def describe(self) -> dict:
        """What slide summaries record of the model."""
        return {"run": str(self.run.resolve()), "kind": self.kind, "fingerprint": self.fingerprint,
                "backbones": {r.family: r.fingerprint for r in self.backbones.values()},
                "random_weights": self.random_weights, "tta": self.tta, "precision": self.settings["precision"]}


def load_predictor(run: Path | str, options: PredictorOptions | None = None, *, backbone: TapBackbone | None = None,
                   head_model: ConStructHead | None = None, **overrides) -> LoadedModel:
    """The model of a run folder, head or student. `overrides` set fields of `options` (head, device,
    precision, tta, conch). A head run may be given its CONCH (`backbone`, anything with `recipe` and
    `taps(images01, with_embedding=...)`, still fingerprint-checked) and its head (`head_model`) in memory
    instead of having them built from the run."""
    options = replace(options or PredictorOptions(), **overrides)
    if options.head not in WHICH:
        raise ConstructError(f"--head {options.head}: expected one of {', '.join(WHICH)}")
    run = Path(run)
    if run_kind(read_run_config(run)) == STUDENT_KIND:
        return _student(run, options)
    return _head(run, options, backbone, head_model)


def load_conch(recipe: BackboneRecipe, spec: str | None = None, conch: TapBackbone | None = None) -> TapBackbone:
    """CONCH as the run's store recorded it (or from `spec`, e.g. --conch), checked to be the same weights."""
    if conch is None:
        conch = create_backbone("conch", spec or recipe.spec, recipe.image_size)
    got = conch.recipe
    if got.fingerprint != recipe.fingerprint:
        raise ConstructError(
            f"conch: weights {got.spec} have fingerprint {got.fingerprint[:12]} but the run's store was "
            f"built with {recipe.spec} (fingerprint {recipe.fingerprint[:12]}); pass those weights with --conch"
        )
    if got.image_size != recipe.image_size:
        raise ConstructError(f"conch: built for {got.image_size} px but the run used {recipe.image_size} px")
    return conch


def _head(run: Path, options: PredictorOptions, backbone: TapBackbone | None,
          head: ConStructHead | None) -> LoadedModel:
    meta, classes, recipes, preprocessing = head_run_meta(run)
    recipe = recipes["conch"]
    if head is None:
        head, _ = load_head(run, options.head)
    if head.config.n_classes != len(classes):
        raise ConstructError(f"{run}: head has {head.config.n_classes} classes, the run's class set {len(classes)}")
    precision = resolve_precision(options.precision, resolve_device(options.device), requested_precision(meta))
    tta = True if options.tta is None else options.tta
    variants = variants_for(tta)
    tile_size = int(preprocessing["tile_size"])
    if options.tile_size is not None and options.tile_size != tile_size:
        raise ConstructError(f"--tile-size {options.tile_size}: a head run reads only its training tile ({tile_size} "
                             f"px, CONCH's patch grid); larger windows need a student run (`construct distill`)")
    fingerprint = module_fingerprint(head)
    settings = {
        "head_fingerprint": fingerprint, "tta": [v.to_dict() for v in variants],
        "background_power": BACKGROUND_POWER, "conch_image_size": recipe.image_size, "precision": precision,
        "conch_fingerprint": recipe.fingerprint,
    }

    def build() -> Predictor:
        conch = load_conch(recipe, options.conch, backbone)
        return HeadPredictor(conch, head, classes, tile_size, variants, precision, resolve_device(options.device))

    return LoadedModel(run, "head", meta, classes, tile_size, tile_size, run_mpp(meta),
                       bool(recipe.random_weights or meta["store"].get("random_weights", False)),
                       {"conch": recipe}, fingerprint, tta, True, len(variants), settings, options, build)


def _student(run: Path, options: PredictorOptions) -> LoadedModel:
    student, meta = load_student(run, options.head)
    classes, trained = ClassSet.from_dict(meta["classes"]), int(meta["tile_size"])
    tile_size = options.tile_size or trained
    if options.tile_size is not None:
        stride = student_stride(student)
        if tile_size < trained or tile_size % stride:
            raise ConstructError(f"--tile-size {tile_size}: expected a multiple of {stride} px (the student's "
                                 f"stride), at least its training tile ({trained} px)")
    tta = bool(options.tta)
    precision = resolve_precision(options.precision, resolve_device(options.device), requested_precision(meta))
    fingerprint = module_fingerprint(student)
    try:  # the student learnt from its teacher's tiles
        mpp = run_mpp(read_run_config(Path(meta["teacher"]["run"])))
    except (ConstructError, KeyError, TypeError):
        mpp = None

    def build() -> Predictor:
        return StudentPredictor(student, classes, tile_size, flip_tta=tta, device=resolve_device(options.device),
                                precision=precision)

    return LoadedModel(run, STUDENT_KIND, meta, classes, tile_size, trained, mpp, bool(meta.get("random_weights", False)),
                       {}, fingerprint, tta, False, STUDENT_FLIP_VARIANTS if tta else 1,
                       {"student_fingerprint": fingerprint, "flip_tta": tta, "precision": precision}, options, build)


def student_stride(student) -> int:
    """The factor a student's input sides must be a multiple of (its encoder's output stride)."""
    return int(getattr(student.net.encoder, "output_stride", DEFAULT_STRIDE))
