"""`construct ablate`: the paper's ablation variants trained from one store with one seed and schedule.

Each variant is an ordinary run in `OUT/<variant>/`; with a dataset it is also refined and scored on a
split. `OUT/ablation.json` maps each variant to its metrics, `OUT/ablation.md` holds the table. Finished
variants (`OUT/<variant>/variant.json`) are skipped on a rerun, an interrupted one resumes. Under torchrun
the variants are shared out among the processes, each training its own alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from construct.atomic import write_text_atomic
from construct.data.classes import ClassSet
from construct.distributed import session
from construct.errors import ConstructError
from construct.evaluate.ablation import ABLATION_FILE, format_ablation, markdown_ablation
from construct.runs import is_run, read_metrics, read_run_config
from construct.train.config import TrainConfig, resolve_config

VARIANTS: dict[str, dict] = {
    "full": {},
    "no-distill": {"distill": False},
    "no-contrast": {"contrast": False},
    "no-text-init": {"text_init": False},
    "bce-only": {"distill": False, "contrast": False},
}
VARIANT_FILE = "variant.json"  # in a variant's folder once it is trained (and scored)
MARKDOWN_FILE = "ablation.md"
# Settings that may differ between the first run of a variant and its resumption.
WHERE_IT_RUNS = ("out", "device", "workers")


@dataclass
class AblateConfig:
    out: Path
    preset: str = "paper"
    config_file: Path | None = None
    train_flags: dict | None = None  # train's flags (features, val_features, steps, lr, ...), None = unset
    variants: tuple[str, ...] = tuple(VARIANTS)
    data: Path | None = None  # with a dataset: refine + eval each variant on `split`
    split: str = "test"
    crf_workers: int = 2
    progress: bool = True


def parse_variants(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        raise ConstructError(f"--variants {text}: unknown {', '.join(unknown) or 'empty list'}; "
                             f"choose from {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(names))


def variant_config(cfg: AblateConfig, name: str) -> TrainConfig:
    flags = {**(cfg.train_flags or {}), **VARIANTS[name], "out": str(cfg.out / name)}
    return resolve_config(cfg.preset, cfg.config_file, **flags)


def _check_same_settings(folder: Path, tc: TrainConfig) -> None:
    saved = read_run_config(folder).get("train", {})
    now = tc.to_dict()
    changed = sorted(k for k in set(saved) | set(now)
                     if k not in WHERE_IT_RUNS and saved.get(k) != now.get(k))
    if changed:
        raise ConstructError(f"{folder}: holds a run with other settings ({', '.join(changed)} differ); "
                             f"use another --out or the same flags")


def _best_validation(run: Path) -> dict:
    """The validation metrics of the run's best record (the head `head_best` holds)."""
    records = read_metrics(run)
    best = max((r for r in records if "val_mIoU" in r), key=lambda r: r["val_mIoU"], default=None)
    if best is None:
        raise ConstructError(f"{run}: no validation records (give --val-features)")
    return {"mIoU": best["val_mIoU"], "mDice": best["val_mDice"], "IoU": best["val_IoU"], "step": best["step"],
            "source": "validation store"}


def _run_variant(cfg: AblateConfig, name: str, echo: Callable[[str], None], progress: bool) -> dict:
    from construct.train.trainer import train

    folder = cfg.out / name
    done = folder / VARIANT_FILE
    if done.is_file():
        echo(f"{name}: done before, kept ({done})")
        return json.loads(done.read_text())["metrics"]
    tc = variant_config(cfg, name)
    resume = is_run(folder)
    if resume:
        _check_same_settings(folder, tc)
    echo(f"{name}: training in {folder}" + (" (resuming)" if resume else ""))
    train(tc, resume=resume and (folder / "checkpoint.pt").is_file(), progress=progress, alone=True)
    metrics = _score(cfg, folder, tc, progress) if cfg.data is not None else _best_validation(folder)
    write_text_atomic(done, json.dumps({"variant": name, "settings": tc.to_dict(), "metrics": metrics},
                                       indent=2, allow_nan=False) + "\n")
    echo(f"{name}: mIoU {metrics['mIoU']:.2f}")
    return metrics


def _score(cfg: AblateConfig, folder: Path, tc: TrainConfig, progress: bool) -> dict:
    from construct.evaluate.run import evaluate_predictions
    from construct.refine import RefineConfig, refine

    pred = folder / "predictions" / cfg.split
    refine(RefineConfig(run=folder, data=cfg.data, split=cfg.split, out=pred, workers=cfg.crf_workers,
                        device=tc.device), progress=progress)
    classes = ClassSet.from_dict(read_run_config(folder)["classes"])
    return evaluate_predictions(pred, cfg.data, cfg.split, classes=classes, json_path=folder / "eval.json",
                                progress=progress)


def run_ablation(cfg: AblateConfig, echo: Callable[[str], None] = print) -> dict[str, dict] | None:
    """Train (and score) every variant; returns {variant: metrics} on the main process (None elsewhere)."""
    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConstructError(f"{cfg.out}: exists and is not a folder")
    for name in cfg.variants:
        variant_config(cfg, name)  # every variant's settings are valid before any training starts
    device = (cfg.train_flags or {}).get("device") or "auto"
    with session(device) as (world, _):
        mine = cfg.variants[world.rank::world.world_size]
        say = echo if world.is_main else (lambda _msg: None)
        for name in mine:
            _run_variant(cfg, name, say, cfg.progress and world.is_main)
        world.barrier()
        if not world.is_main:
            return None
        results = {name: json.loads((cfg.out / name / VARIANT_FILE).read_text())["metrics"]
                   for name in cfg.variants}
        write_text_atomic(cfg.out / ABLATION_FILE, json.dumps(results, indent=2, allow_nan=False) + "\n")
        write_text_atomic(cfg.out / MARKDOWN_FILE, markdown_ablation(results))
        echo("\n" + format_ablation(results))
        return results

