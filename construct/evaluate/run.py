"""`evaluate_predictions`: score a folder of predicted masks, write the JSON and the HTML report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from construct.atomic import write_text_atomic
from construct.data.classes import BCSS, ClassSet
from construct.data.dataset import list_split
from construct.errors import ConstructError
from construct.evaluate.ablation import read_ablation
from construct.evaluate.baselines import baseline_scores
from construct.evaluate.collect import Collected, collect
from construct.evaluate.gallery import prototype_gallery
from construct.evaluate.report import example_tiles, render_report
from construct.metrics import PROTOCOLS, Scores, apply_protocol, scores
from construct.refine.config import REFINE_META

# Provenance files written by `construct refine` (in the prediction folder) and `construct synth`
# (in the data root); they mark our row when the numbers cannot mean anything.
SYNTH_META = "construct_synth.json"
GALLERY_K = 8


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConstructError(f"{path}: unreadable JSON ({e})") from e
    if not isinstance(data, dict):
        raise ConstructError(f"{path}: expected a JSON object")
    return data


def _flag(meta: dict | None, key: str) -> bool | None:
    """The flag's value, or None when the provenance file is absent (unknown, not false)."""
    return None if meta is None else bool(meta.get(key, False))


def _defined(value: float) -> float | None:
    """NaN (undefined: class absent from ground truth and prediction) becomes JSON null."""
    return None if math.isnan(value) else float(value)


def metrics_dict(s: Scores, classes: ClassSet) -> dict:
    """The JSON-ready metrics of one scored matrix: percentages, None for undefined values."""
    return {
        "mIoU": _defined(s.miou),
        "mDice": _defined(s.mdice),
        "FwIoU": _defined(s.fwiou),
        "pixel_accuracy": _defined(s.pixel_accuracy),
        "IoU": {c.name: _defined(s.iou[c.mask_index]) for c in classes.classes},
        "Dice": {c.name: _defined(s.dice[c.mask_index]) for c in classes.classes},
    }


def build_result(collected: Collected, classes: ClassSet, protocol: str, split: str) -> dict:
    """The metrics dict, JSON-ready: percentages, None for undefined values, confusion in pixels."""
    conf = apply_protocol(collected.total, protocol, classes.background_index)
    return {
        "protocol": protocol,
        "split": split,
        "n_images": len(collected.samples),
        "classes": classes.names,
        **metrics_dict(scores(conf, classes), classes),
        "confusion": conf.tolist(),
        "n_missing": len(collected.missing),
        "missing": collected.missing,
        "extra": collected.extra,
    }


def learned_prototypes(run: Path | str) -> np.ndarray:
    """(C, 512) prototypes of a trained run's best head, in CONCH's joint space like the embeddings."""
    from construct.head.io import load_head

    head, _ = load_head(run, "best", command="eval")
    return head.prototypes.detach().float().numpy()


# What the table and JSON keep of a student's scores (its confusion matrix and file lists are its own eval's).
STUDENT_KEYS = ("mIoU", "mDice", "FwIoU", "pixel_accuracy", "IoU", "Dice", "n_images")


def evaluate_predictions(
    pred_dir: Path | str,
    data_dir: Path | str,
    split: str,
    protocol: str = "bcss",
    classes: ClassSet = BCSS,
    allow_missing: bool = False,
    json_path: Path | str | None = None,
    report_path: Path | str | None = None,
    features: Path | str | None = None,
    progress: bool = True,
    gallery_k: int = GALLERY_K,
    baselines: bool = False,
    run: Path | str | None = None,
    ablation: Path | str | None = None,
    student_pred: Path | str | None = None,
) -> dict:
    """Score `pred_dir/<stem>.png` against the split's ground truth; see `build_result` for the dict.

    Adds "random_weights" and "synthetic" (None when unknown). `features` (the train feature store)
    is only used for the report's prototype gallery, whose prototypes are the learned ones of `run` when
    given, else the class descriptions' CONCH text embeddings. `baselines` adds "baselines": the trivial
    predictions of `construct.evaluate.baselines` scored on the same images and protocol. `ablation`, a
    folder written by `construct ablate`, puts its table in the report. `student_pred`, the masks of a
    distilled student (`construct refine --run STUDENT`), adds "student": its scores on the same images,
    a row beside ours in the table.
    """
    if protocol not in PROTOCOLS:
        raise ConstructError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
    pred_dir, data_dir = Path(pred_dir), Path(data_dir)
    table = read_ablation(Path(ablation)) if ablation is not None else None  # a bad folder fails first
    samples = list_split(data_dir, split, classes)
    collected = collect(pred_dir, samples, classes, allow_missing=allow_missing, progress=progress)
    result = build_result(collected, classes, protocol, split)
    if student_pred is not None:
        student = build_result(collect(Path(student_pred), samples, classes, allow_missing=allow_missing,
                                       progress=progress), classes, protocol, split)
        result["student"] = {k: student[k] for k in STUDENT_KEYS}
    refine_meta = _read_json(pred_dir / REFINE_META)
    result["random_weights"] = _flag(refine_meta, "random_weights")
    result["stain"] = (refine_meta or {}).get("stain")  # what refine did to the tiles' colours
    result["synthetic"] = _flag(_read_json(data_dir / SYNTH_META), "synthetic")
    if baselines:
        result["baselines"] = {name: metrics_dict(b, classes)
                               for name, b in baseline_scores(collected.samples, classes, protocol).items()}
    if json_path is not None:
        write_text_atomic(Path(json_path), json.dumps(result, indent=2, allow_nan=False) + "\n")
    if report_path is not None:
        gallery, source = None, "CONCH text embeddings of the class descriptions"
        if features is not None:
            prototypes = None
            if run is not None:
                prototypes, source = learned_prototypes(run), f"learned by the run {run}"
            gallery = prototype_gallery(features, gallery_k, prototypes)
        tiles = example_tiles(collected, pred_dir, classes, protocol)
        write_text_atomic(Path(report_path), render_report(result, classes, tiles, gallery, source, table))
    return result
