"""A run folder: what `construct train` (a head run) and `construct distill` (a student run) write, and
what every later phase reads.

    RUN/config.json              format, version, kind ("head" or "student") and how to rebuild the model
    RUN/<model>_best.safetensors the weights that scored best on validation (absent without validation)
    RUN/<model>_last.safetensors the latest weights
    RUN/metrics.jsonl            one JSON record per validation interval, rewritten whole
    RUN/<checkpoint>.pt          everything a resumed run needs (written atomically)

This module knows the layout, not the models: the head (construct.head.io) and the student
(construct.student.io) build their networks from the state dicts read here. It imports no phase.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from construct import __version__
from construct.atomic import atomic_output, write_text_atomic
from construct.errors import ConstructError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from construct.backbones.recipe import BackboneRecipe
    from construct.data.classes import ClassSet

RUN_FORMAT = "construct-run"
RUN_FORMAT_VERSION = 1
RUN_CONFIG = "config.json"
METRICS = "metrics.jsonl"

HEAD_KIND = "head"  # stage 1, `construct train`
STUDENT_KIND = "student"  # stage 2, `construct distill`
MADE_BY = {HEAD_KIND: "construct train", STUDENT_KIND: "construct distill"}
WHICH = ("best", "last")  # which weights: best on validation (falling back to last) or last
WEIGHT_FILES = {kind: {which: f"{kind}_{which}.safetensors" for which in WHICH} for kind in MADE_BY}


# ---------------------------------------------------------------------------------------- config

def is_run(run: Path | str) -> bool:
    """True when `run` holds a run config (a run was started there)."""
    return (Path(run) / RUN_CONFIG).is_file()


def write_run_config(run: Path, config: dict) -> None:
    write_text_atomic(Path(run) / RUN_CONFIG, json.dumps(
        {"format": RUN_FORMAT, "format_version": RUN_FORMAT_VERSION, "package_version": __version__, **config},
        indent=2) + "\n")


def read_run_config(run: Path | str) -> dict:
    path = Path(run) / RUN_CONFIG
    if not path.is_file():
        raise ConstructError(f"{run}: not a construct run (no {RUN_CONFIG}; train one with `construct train`)")
    try:
        meta = json.loads(path.read_text())
    except ValueError as e:
        raise ConstructError(f"{path}: unreadable run config ({e})") from e
    if not isinstance(meta, dict) or meta.get("format") != RUN_FORMAT:
        raise ConstructError(f"{path}: not a construct run config")
    if meta.get("format_version") != RUN_FORMAT_VERSION:
        raise ConstructError(
            f"{path}: run format version {meta.get('format_version')}, this construct reads "
            f"version {RUN_FORMAT_VERSION}; retrain with this version"
        )
    return meta


# ---------------------------------------------------------------------------------------- kinds

def run_kind(meta: dict) -> str:
    """`head` (stage 1, `construct train`) or `student` (stage 2, `construct distill`)."""
    return str(meta.get("kind", HEAD_KIND))


def require_kind(run: Path | str, meta: dict, kind: str, command: str) -> None:
    """A one-line refusal when `command` is given a run of the other kind."""
    found = run_kind(meta)
    if found != kind:
        raise ConstructError(f"{run}: is a {found} run (made by `{MADE_BY.get(found, 'construct')}`); "
                             f"`{command}` needs a {kind} run")


def read_kind(run: Path | str, kind: str, command: str) -> dict:
    """The config of a run that must be of `kind` (the one check every command makes)."""
    meta = read_run_config(run)
    require_kind(run, meta, kind, command)
    return meta


def requested_precision(meta: dict) -> str | None:
    """fp32 or bf16 when a run was explicitly asked to run at it (`train`/`distill --precision`), which
    `--precision auto` then keeps; None when it was left to auto. A head run from before `train --precision`
    counts its store's bf16 as asked (extract's bf16 was an opt-in) and its fp32 as not (the old default)."""
    from construct.runtime import PRECISIONS

    if run_kind(meta) == STUDENT_KIND:
        asked = meta.get("distill", {}).get("precision")
    elif "precision" in meta.get("train", {}):
        asked = meta["train"]["precision"]
    else:
        asked = meta.get("store", {}).get("preprocessing", {}).get("precision")
        asked = asked if asked == "bf16" else None
    return asked if asked in PRECISIONS else None


def head_run_meta(run: Path | str, command: str = "refine"
                  ) -> tuple[dict, ClassSet, dict[str, BackboneRecipe], dict]:
    """A head run's config, classes, backbone recipes and preprocessing (with `tile_size`)."""
    from construct.backbones.recipe import BackboneRecipe
    from construct.data.classes import ClassSet

    meta = read_kind(run, HEAD_KIND, command)
    try:
        classes = ClassSet.from_dict(meta["classes"])
        recipes = {k: BackboneRecipe.from_dict(v) for k, v in meta["backbones"].items()}
        preprocessing = dict(meta["store"]["preprocessing"])
        preprocessing["tile_size"] = int(preprocessing.get("tile_size", preprocessing["image_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConstructError(f"{run}: run config lacks what {command} needs ({type(e).__name__}: {e}); "
                             f"retrain with this version") from e
    if "conch" not in recipes:
        raise ConstructError(f"{run}: run config records no CONCH backbone")
    return meta, classes, recipes, preprocessing


def run_mpp(meta: dict) -> float | None:
    """µm/px of a head run's training tiles, when `extract --mpp` recorded it."""
    value = meta.get("store", {}).get("preprocessing", {}).get("mpp")
    return float(value) if value is not None else None


# ---------------------------------------------------------------------------------------- weights

def weights_path(run: Path | str, kind: str, which: str) -> Path:
    """Where a run's `best` or `last` weights are; `best` falls back to `last` when no validation chose one."""
    run = Path(run)
    files = WEIGHT_FILES[kind]
    path = run / files[which]
    if not path.is_file() and which == "best":
        path = run / files["last"]
    if not path.is_file():
        raise ConstructError(f"{run}: has no {kind} weights yet ({files['last']} missing)")
    return path


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str]) -> None:
    """The module's state dict as safetensors (CPU, contiguous), written atomically, with `metadata`."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_output(path) as tmp:
        save_file(state, str(tmp), metadata={**metadata, "package_version": __version__})


def read_weights(path: Path, kind: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise ConstructError(f"{path}: unreadable {kind} weights ({e})") from e


# ---------------------------------------------------------------------------------------- progress

def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """A resumable checkpoint (tensors, numbers, lists and dicts only), replaced atomically."""
    import torch

    with atomic_output(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A checkpoint written by `save_checkpoint`, loaded without executing pickled code."""
    import torch

    return torch.load(path, map_location=device, weights_only=True)


def write_metrics(run: Path, records: list[dict]) -> None:
    """RUN/metrics.jsonl, rewritten whole: a redone interval never appears twice."""
    write_text_atomic(Path(run) / METRICS, "".join(json.dumps(r) + "\n" for r in records))


def read_metrics(run: Path | str) -> list[dict]:
    path = Path(run) / METRICS
    if not path.is_file():
        raise ConstructError(f"{run}: has no {METRICS} (the run recorded no interval yet)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
