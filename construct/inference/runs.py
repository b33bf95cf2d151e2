"""What the predictors need from a run folder: a stage-1 (head) run's classes, CONCH recipe and tile size.

Run kinds: `construct train` writes head runs, `construct distill` student runs (config.json "kind").
"""

from __future__ import annotations

from pathlib import Path

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.registry import create_backbone
from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.head.io import read_run_config
from construct.inference.head import TapBackbone
from construct.runtime import PRECISIONS

HEAD_KIND = "head"
STUDENT_KIND = "student"


def run_kind(meta: dict) -> str:
    """`head` (stage 1, `construct train`) or `student` (stage 2, `construct distill`)."""
    return str(meta.get("kind", HEAD_KIND))


def require_kind(run: Path, meta: dict, kind: str, command: str) -> None:
    """A one-line refusal when `command` is given a run of the other kind."""
    found = run_kind(meta)
    if found != kind:
        made_by = "construct distill" if found == STUDENT_KIND else "construct train"
        raise ConstructError(f"{run}: is a {found} run (made by `{made_by}`); `{command}` needs a {kind} run")


def requested_precision(meta: dict) -> str | None:
    """fp32 or bf16 when a run was explicitly asked to run at it (`train`/`distill --precision`), which
    `--precision auto` then keeps; None when it was left to auto. A head run from before `train --precision`
    counts its store's bf16 as asked (extract's bf16 was an opt-in) and its fp32 as not (the old default)."""
    if run_kind(meta) == STUDENT_KIND:
        asked = meta.get("distill", {}).get("precision")
    elif "precision" in meta.get("train", {}):
        asked = meta["train"]["precision"]
    else:
        asked = meta.get("store", {}).get("preprocessing", {}).get("precision")
        asked = asked if asked == "bf16" else None
    return asked if asked in PRECISIONS else None


def head_run_meta(run: Path, command: str = "refine") -> tuple[dict, ClassSet, dict[str, BackboneRecipe], dict]:
    """A head run's config, classes, backbone recipes and preprocessing (with `tile_size`)."""
    meta = read_run_config(run)
    require_kind(run, meta, HEAD_KIND, command)
    try:
        classes = ClassSet.from_dict(meta["classes"])
        recipes = {k: BackboneRecipe.from_dict(v) for k, v in meta["backbones"].items()}
        preprocessing = dict(meta["store"]["preprocessing"])
        preprocessing["tile_size"] = int(preprocessing.get("tile_size", preprocessing["image_size"]))
    except (KeyError, TypeError, ValueError) as e:
        raise ConstructError(f"{run}: run config lacks what refine needs ({type(e).__name__}: {e}); "
                             f"retrain with this version") from e
    if "conch" not in recipes:
        raise ConstructError(f"{run}: run config records no CONCH backbone")
    return meta, classes, recipes, preprocessing


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
