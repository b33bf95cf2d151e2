"""`construct refine`: masks from a run, through the inference pipeline (construct.inference).

A split or folder source, a predictor, a PNG mask sink. The predictor follows the run's kind: a head run
(`construct train`) gets live CONCH + the head with 6-way TTA and the Dense CRF; a student run (`construct
distill`) gets the student network alone, flip-TTA and the CRF only when asked for. `refine.json` in the
output folder records what was run; it is written first with "complete": false and rewritten at the
end. Re-running the same command skips tiles whose PNG exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from construct import __version__
from construct.atomic import write_text_atomic
from construct.backbones.recipe import BackboneRecipe
from construct.data.classes import ClassSet
from construct.data.dataset import SPLITS, Sample
from construct.data.sources import SampleSource, folder_source, split_source
from construct.errors import ConstructError
from construct.head.model import ConStructHead
from construct.inference.crf import CRF_PARAMS
from construct.inference.factory import LoadedModel, PredictorOptions, load_predictor
from construct.inference.head import TapBackbone
from construct.inference.pipeline import run_inference
from construct.inference.sinks import MaskSink
from construct.refine.config import GATES, REFINE_META, SCORES_DIR, RefineConfig
from construct.runs import STUDENT_KIND
from construct.runtime import check_precision
from construct.stain.normalize import check_method
from construct.stain.predictor import with_stain_norm
from construct.stain.runs import file_batches, fit_input, spread

REFINE_FORMAT = "construct-refine"
REFINE_FORMAT_VERSION = 1


@dataclass
class RefineResult:
    out: Path
    n_images: int
    n_written: int
    n_skipped: int
    seconds: float  # inference + CRF + writing, without building the models
    gate: str
    random_weights: bool
    backbones: dict[str, BackboneRecipe] = field(default_factory=dict)
    tta: bool = True
    crf: bool = True

    @property
    def tiles_per_s(self) -> float:
        return self.n_written / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------- inputs

def _validate(cfg: RefineConfig) -> None:
    if (cfg.images is None) == (cfg.data is None):
        raise ConstructError("give either --data (with --split) or --images, not both or neither")
    if cfg.images is not None and cfg.split is not None:
        raise ConstructError("--split applies to --data; --images refines every tile in the folder")
    if cfg.data is not None and cfg.split not in SPLITS:
        raise ConstructError(f"--split {cfg.split}: expected one of {', '.join(SPLITS)}")
    if cfg.gate is not None and cfg.gate not in GATES:
        raise ConstructError(f"--gate {cfg.gate}: expected one of {', '.join(GATES)}")
    check_precision(cfg.precision)
    check_method(cfg.stain_norm)
    if cfg.batch_size < 1:
        raise ConstructError("--batch-size must be at least 1")
    if cfg.workers < 0 or cfg.loader_workers < 0:
        raise ConstructError("--workers must be 0 (in the main process) or more")
    if not 0.0 <= cfg.pred_threshold <= 1.0:
        raise ConstructError(f"--pred-threshold {cfg.pred_threshold}: expected a probability in [0, 1]")


def make_source(cfg: RefineConfig, classes: ClassSet, tile_size: int) -> SampleSource:
    if cfg.images is not None:
        return folder_source(Path(cfg.images), classes, tile_size, cfg.loader_workers)
    return split_source(Path(cfg.data), cfg.split, classes, tile_size, workers=cfg.loader_workers)


def resolve_gate(cfg: RefineConfig, samples: list[Sample]) -> str:
    """The gate asked for, or the paper's protocol for the source; refuses a gate the source cannot feed."""
    default = "pred" if cfg.images is not None else ("labels" if cfg.split == "train" else "gt")
    gate = cfg.gate or default
    source = f"--images {cfg.images}" if cfg.images is not None else f"the {cfg.split} split"
    if gate == "labels" and any(s.labels is None for s in samples):
        raise ConstructError(f"--gate labels needs labels in the file names (the train split), which {source} "
                             f"lacks; use --gate gt (valid/test), pred or none")
    if gate == "gt" and any(s.mask_path is None for s in samples):
        raise ConstructError(f"--gate gt needs ground-truth masks (the valid/test splits), which {source} "
                             f"lacks; use --gate labels (train), pred or none")
    return gate


# ---------------------------------------------------------------------------------------- model

def predictor_options(cfg: RefineConfig) -> PredictorOptions:
    return PredictorOptions(head=cfg.head, device=cfg.device, precision=cfg.precision, tta=cfg.tta,
                            conch=cfg.conch)


# ---------------------------------------------------------------------------------------- refine.json

def _settings(cfg: RefineConfig, model: LoadedModel, crf: bool, gate: str) -> dict:
    """Everything that decides the masks: resuming into a folder made with other settings is refused."""
    source = ({"images": str(Path(cfg.images).resolve())} if cfg.images is not None
              else {"data": str(Path(cfg.data).resolve()), "split": cfg.split})
    return {
        "run": str(Path(cfg.run).resolve()), **source, "gate": gate,
        "pred_threshold": cfg.pred_threshold if gate == "pred" else None,
        "crf": dict(CRF_PARAMS) if crf else None, "tile_size": model.tile_size, **model.settings,
        "stain_norm": cfg.stain_norm,
    }


def _check_out(out: Path, settings: dict, samples: list[Sample]) -> dict | None:
    """The refine.json of predictions of these settings already in `out` (resume), None when there are none;
    refuses other settings."""
    path = out / REFINE_META
    if not path.is_file():
        clash = [s.image_id for s in samples if (out / f"{s.image_id}.png").exists()]
        if clash:
            raise ConstructError(f"{out}: holds PNGs not written by `construct refine` (e.g. {clash[0]}.png); "
                                 f"use another --out")
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConstructError(f"{path}: unreadable ({e}); delete it or use another --out") from e
    if not isinstance(old, dict) or old.get("format") != REFINE_FORMAT:
        raise ConstructError(f"{path}: not written by `construct refine`; use another --out")
    old_settings = old.get("settings", {})
    if old_settings != settings:
        changed = sorted(k for k in set(old_settings) | set(settings) if old_settings.get(k) != settings.get(k))
        raise ConstructError(f"{out}: holds predictions made with other settings ({', '.join(changed)} differ); "
                             f"use another --out or delete that folder")
    return old


def _write_meta(out: Path, record: dict) -> None:
    write_text_atomic(out / REFINE_META, json.dumps(record, indent=2) + "\n")


# ---------------------------------------------------------------------------------------- refine

def refine(
    cfg: RefineConfig,
    conch: TapBackbone | None = None,
    head: ConStructHead | None = None,
    progress: bool = True,
    model: LoadedModel | None = None,
) -> RefineResult:
    """Write `<stem>.png` masks for every tile of the source into `cfg.out_path` (resuming if it already
    holds some from the same settings). A head run (`construct train`) runs live CONCH: `conch` (anything
    with `recipe` and `taps(images01, with_embedding=...)`) and `head` may be passed in instead of being
    built from the run. A student run (`construct distill`) needs neither. `model`: the run's model,
    already loaded (by `load_predictor` with `predictor_options(cfg)`), e.g. by the Python API."""
    _validate(cfg)
    if model is None:
        model = load_predictor(cfg.run, predictor_options(cfg), backbone=conch, head_model=head)
    crf = model.crf if cfg.crf is None else cfg.crf
    classes = model.classes
    source = make_source(cfg, classes, model.tile_size)
    samples = source.samples
    gate = resolve_gate(cfg, samples)
    source.with_masks = gate == "gt"  # masks are decoded only when they gate
    out = cfg.out_path
    settings = _settings(cfg, model, crf, gate)
    previous = _check_out(out, settings, samples)
    sink = MaskSink(out, classes, out / SCORES_DIR if cfg.save_scores else None, resume=previous is not None)
    pending = [s for s in samples if not sink.done(s.image_id)]
    if pending or previous is None:
        # One estimate of the source's stain (a sample of its tiles), not one per tile.
        normalizer, stain = fit_input(cfg.stain_norm, Path(cfg.run),
                                      file_batches([s.image_path for s in spread(samples)], model.tile_size),
                                      f"{source.name} ({len(samples)} tiles)")
    else:  # finished before: what was done then stands
        normalizer, stain = None, previous.get("stain")
    record = {
        "format": REFINE_FORMAT, "format_version": REFINE_FORMAT_VERSION, "package_version": __version__,
        "complete": False, "random_weights": model.random_weights, "kind": model.kind,
        "backbones": {k: r.to_dict() for k, r in model.backbones.items()},
        "run": settings["run"], "split": cfg.split, "data": settings.get("data"), "images": settings.get("images"),
        "gate": gate, "tta": model.tta, "crf": crf, "precision": settings["precision"],
        "n_variants": model.n_variants, "head": cfg.head,
        **({"student": model.meta["student"]} if model.kind == STUDENT_KIND else {}),
        "classes": classes.names, "n_images": len(samples), "settings": settings, "stain": stain,
    }
    result = RefineResult(out, len(samples), 0, len(samples) - len(pending), 0.0, gate, model.random_weights,
                          dict(model.backbones), model.tta, crf)
    if pending:
        predictor = with_stain_norm(model.predictor, normalizer)  # built (CONCH checked) before anything is written
        out.mkdir(parents=True, exist_ok=True)
        _write_meta(out, record)
        stats = run_inference(source, predictor, [sink], gate, crf=crf, batch_size=cfg.batch_size,
                              workers=cfg.workers, pred_threshold=cfg.pred_threshold, progress=progress,
                              total=len(pending), desc=f"refine {source.name}")
        result.seconds, result.n_written = stats.seconds, stats.n_written
    _write_meta(out, {**record, "complete": True, "n_written": result.n_written, "n_skipped": result.n_skipped,
                      "seconds": round(result.seconds, 3), "tiles_per_s": round(result.tiles_per_s, 3)})
    return result
