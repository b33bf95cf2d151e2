"""Teacher targets: the stage-1 run labels the train split along refine's own path (file-name labels gate
the classes, TTA, CRF), into a score store beside the run, `RUN/targets/<data fingerprint>.zarr`.

Resumable (the store's done rows are skipped) and reused when it already holds the same run's scores of the
same data and settings. `--targets` points at a store made elsewhere; it is checked against the data.
"""

from __future__ import annotations

import os
from pathlib import Path

from construct.backbones.weights import fingerprint
from construct.data.classes import ClassSet
from construct.data.dataset import Sample, split_dir
from construct.data.sources import SampleSource
from construct.distill.config import DistillConfig
from construct.errors import ConstructError
from construct.head.io import load_head
from construct.inference.crf import CRF_PARAMS
from construct.inference.head import HeadPredictor, TapBackbone
from construct.inference.pipeline import run_inference
from construct.inference.runs import head_run_meta, load_conch, requested_precision
from construct.inference.score_store import ScoreStore, ScoreStoreSink
from construct.inference.tta import variants_for
from construct.runtime import resolve_device, resolve_precision
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
    meta, classes, recipes, prep = head_run_meta(Path(cfg.run), "distill --run")
    head, _ = load_head(cfg.run, "best")
    fp = data_fingerprint(Path(cfg.data), source.samples)
    path = Path(cfg.run) / TARGETS_DIR / f"{fp[:16]}.zarr"
    # Under auto, targets being resumed or reused keep the precision they were made at.
    precision = resolve_precision(cfg.precision, resolve_device(cfg.device),
                                  requested_precision(meta) or _made_at(path))
    variants = variants_for(cfg.tta)
    compat = {
        "run": str(Path(cfg.run).resolve()), "head_fingerprint": fingerprint(iter(head.state_dict().items())),
        "conch_fingerprint": recipes["conch"].fingerprint, "data_fingerprint": fp, "classes": classes.names,
        "gate": "labels", "tta": [v.to_dict() for v in variants], "crf": dict(CRF_PARAMS) if cfg.crf else None,
        "precision": precision, "tile_size": prep["tile_size"],
    }
    store = ScoreStore.open_or_create(path, [s.image_id for s in source.samples], len(classes),
                                      prep["tile_size"], compat)
    if store.complete:
        return store
    conch = load_conch(recipes["conch"], cfg.conch, conch)
    predictor = HeadPredictor(conch, head, classes, prep["tile_size"], variants, precision,
                              resolve_device(cfg.device))
    run_inference(source, predictor, [ScoreStoreSink(store)], "labels", crf=cfg.crf,
                  batch_size=cfg.target_batch_size, workers=cfg.target_workers, progress=progress,
                  total=int((~store.done_mask()).sum()), desc="teacher targets")
    return store
