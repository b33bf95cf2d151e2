"""Teacher targets: the stage-1 run labels the train split along refine's own path (file-name labels gate
the classes, TTA, CRF), into a score store beside the run, `RUN/targets/<data fingerprint>.zarr`.

Resumable (the store's done rows are skipped) and reused when it already holds the same run's scores of the
same data and settings. `--targets` points at a store made elsewhere; it is checked against the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from construct.data.classes import ClassSet
from construct.data.dataset import Sample, split_dir
from construct.data.sources import SampleSource
from construct.distill.config import DistillConfig
from construct.errors import ConstructError
from construct.inference.crf import CRF_PARAMS
from construct.inference.factory import load_predictor
from construct.inference.head import TapBackbone
from construct.inference.pipeline import run_inference
from construct.inference.score_store import ScoreStore, ScoreStoreSink
from construct.runs import HEAD_KIND, read_kind, requested_precision
from construct.stain.predictor import with_stain_norm
from construct.stain.runs import file_batches, fit_input, reference_of_files, spread
from construct.store.feature_store import dataset_fingerprint

TARGETS_DIR = "targets"


def data_fingerprint(root: Path, samples: list[Sample]) -> str:
    """Over the train tiles' relative paths and sizes: renamed, added or replaced tiles change it."""
    base = split_dir(root, "train")
    return dataset_fingerprint([f"{s.image_path.relative_to(base)}:{os.path.getsize(s.image_path)}"
                                for s in samples])


def _scheme_text(classes: ClassSet) -> str:
    names, background = classes.label_scheme()
    return ", ".join(f"{n}={i}" for n, i in names) + f", background={background}"


def check_classes(run: Path, run_classes: ClassSet, data_classes: ClassSet, spec: str) -> None:
    if run_classes.label_scheme() != data_classes.label_scheme():
        raise ConstructError(f"{run}: the run's classes ({_scheme_text(run_classes)}) differ from the dataset's "
                             f"(--classes {spec}: {_scheme_text(data_classes)})")


def open_targets(path: Path, samples: list[Sample], classes: ClassSet) -> ScoreStore:
    """A complete score store holding every train tile (as `--targets`), or a one-line refusal."""
    if not Path(path).exists():
        raise ConstructError(f"{path}: teacher targets not found (omit --targets to make them from --run)")
    store = ScoreStore.open(path)
    if not store.complete:
        raise ConstructError(f"{path}: teacher targets are incomplete; re-run `construct distill` without "
                             f"--targets to finish them")
    if store.compat.get("classes") != classes.names:
        raise ConstructError(f"{path}: teacher targets are for classes {store.compat.get('classes')}, "
                             f"the dataset's are {classes.names}")
    missing = sorted({s.image_id for s in samples} - set(store.row_of))
    if missing:
        raise ConstructError(f"{path}: teacher targets lack {len(missing)} train tiles (e.g. {missing[0]})")
    return store


def _made_at(path: Path) -> str | None:
    """The precision an existing targets store was made at; None when there is none (or it is unreadable:
    `open_or_create` then says so)."""
    if not path.exists():
        return None
    try:
        return ScoreStore.open(path).compat.get("precision")
    except ConstructError:
        return None


def make_targets(cfg: DistillConfig, source: SampleSource, conch: TapBackbone | None = None,
                 progress: bool = True) -> ScoreStore:
    """The run's scores and CRF masks of every train tile, made or finished now, or reused."""
    meta = read_kind(cfg.run, HEAD_KIND, "distill --run")  # a student cannot teach
    fp = data_fingerprint(Path(cfg.data), source.samples)
    name = fp[:16]
    if cfg.stain_norm != "none":  # targets of un-normalised tiles keep the name they had before stain work
        name += f"-{cfg.stain_norm}"
    path = Path(cfg.run) / TARGETS_DIR / f"{name}.zarr"
    precision = cfg.precision
    if precision in (None, "auto") and requested_precision(meta) is None:
        precision = _made_at(path) or precision  # under auto, targets resumed or reused keep their precision
    model = load_predictor(cfg.run, head="best", device=cfg.device, precision=precision, tta=cfg.tta,
                           conch=cfg.conch, backbone=conch)
    settings = model.settings
    compat = {
        "run": str(Path(cfg.run).resolve()), "head_fingerprint": settings["head_fingerprint"],
        "conch_fingerprint": settings["conch_fingerprint"], "data_fingerprint": fp, "classes": model.classes.names,
        "gate": "labels", "tta": settings["tta"], "crf": dict(CRF_PARAMS) if cfg.crf else None,
        "precision": settings["precision"], "tile_size": model.tile_size,
    }
    if cfg.stain_norm != "none":
        compat["stain_norm"] = cfg.stain_norm
    store = ScoreStore.open_or_create(path, [s.image_id for s in source.samples], len(model.classes),
                                      model.tile_size, compat)
    if store.complete:
        return store
    paths, where = [s.image_path for s in source.samples], f"train split of {cfg.data}"
    # The estimate the student's run record keeps as its own reference (computed once, see reference_of_files).
    stain = reference_of_files(paths, where, model.tile_size) if cfg.stain_norm != "none" else None
    normalizer, _ = fit_input(cfg.stain_norm, Path(cfg.run),
                              stain if stain is not None else file_batches(spread(paths), model.tile_size), where)
    run_inference(source, with_stain_norm(model.predictor, normalizer), [ScoreStoreSink(store)], "labels", crf=cfg.crf,
                  batch_size=cfg.target_batch_size, workers=cfg.target_workers, progress=progress,
                  total=int((~store.done_mask()).sum()), desc="teacher targets")
    return store
