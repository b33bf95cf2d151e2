"""`construct distill`: teacher targets → student training (AdamW, cosine schedule, validation mIoU per
epoch, best kept, atomic safetensors, `--resume` at epoch boundaries)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from construct.atomic import atomic_output, write_text_atomic
from construct.backbones.weights import seeded_init
from construct.data.classes import load_classes
from construct.data.sources import split_source
from construct.distill.config import WEIGHTINGS, DistillConfig
from construct.distill.data import TargetSet, augment, epoch_batches, target_loader, to_device
from construct.distill.io import STUDENT_FILES, save_student
from construct.distill.losses import boundary_ce, boundary_weights, fixed_weighted, soft_mse, uncertainty_weighted
from construct.distill.student import Student, build_student, check_names
from construct.distill.targets import check_classes, make_targets, open_targets
from construct.errors import ConstructError
from construct.evaluate.metrics import scores as metric_scores
from construct.head.io import RUN_CONFIG, read_run_config, write_run_config
from construct.inference.head import TapBackbone
from construct.inference.pipeline import run_inference
from construct.inference.runs import STUDENT_KIND, head_run_meta, require_kind
from construct.inference.score_store import ScoreStore
from construct.inference.sinks import ConfusionSink
from construct.inference.student import StudentPredictor
from construct.runtime import resolve_device

CHECKPOINT = "distill_checkpoint.pt"
METRICS = "metrics.jsonl"
TERMS = ("mse", "ce")


@dataclass
class DistillResult:
    run: Path
    targets: Path
    n_parameters: int
    best_miou: float | None
    final_loss: float
    seconds: float


def _validate(cfg: DistillConfig) -> None:
    check_names(cfg.arch, cfg.encoder)
    if cfg.weighting not in WEIGHTINGS:
        raise ConstructError(f"--weighting {cfg.weighting}: expected one of {', '.join(WEIGHTINGS)}")
    if cfg.epochs < 1 or cfg.batch_size < 1:
        raise ConstructError("--epochs and --batch-size must be at least 1")
    if cfg.lr <= 0:
        raise ConstructError(f"--lr {cfg.lr}: must be positive")


def objective(student: Student, batch: dict[str, torch.Tensor], cfg: DistillConfig,
              log_vars: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss of one (augmented) batch and its terms."""
    logits = student(batch["images01"])
    terms = {
        "mse": soft_mse(logits, batch["teacher"], batch["gate"]),
        "ce": boundary_ce(logits, batch["mask"], boundary_weights(batch["mask"], cfg.boundary_radius,
                                                                   cfg.boundary_boost)),
    }
    stacked = torch.stack([terms[k] for k in TERMS])
    if log_vars is not None:
        total = uncertainty_weighted(stacked, log_vars)
    else:
        total = fixed_weighted(stacked, torch.tensor([cfg.w_mse, cfg.w_ce], device=stacked.device))
    return total, terms


def cosine(step: int, total: int) -> float:
    """Learning-rate factor: cosine decay from 1 to 0 over `total` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


def validate_student(student: Student, source, classes, tile_size: int, device: torch.device) -> dict:
    """mIoU/mDice (%) of the student's argmax masks on the valid split under the paper's `gt` gate."""
    was_training = student.training
    sink = ConfusionSink(classes)
    run_inference(source, StudentPredictor(student, classes, tile_size, device=device), [sink], "gt",
                  batch_size=16, progress=False)
    student.train(was_training)
    s = metric_scores(sink.matrix, classes)
    return {"mIoU": s.miou, "mDice": s.mdice}


def _check_out(cfg: DistillConfig, resume: bool) -> bool:
    """True when resuming from a checkpoint; refuses a head run, or a run other than the one asked for."""
    out = Path(cfg.out)
    if not resume:
        if (out / RUN_CONFIG).exists():
            raise ConstructError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
        return False
    if not (out / RUN_CONFIG).is_file():
        raise ConstructError(f"{out}: nothing to resume (no {RUN_CONFIG})")
    meta = read_run_config(out)
    require_kind(out, meta, STUDENT_KIND, "distill --resume")
    if meta.get("student") != {**cfg.student_dict(), "n_channels": meta["student"].get("n_channels")}:
        raise ConstructError(f"{out}: was started with another student ({meta['student']}); resume with those "
                             f"--arch/--encoder/--encoder-weights or choose another --out")
    return (out / CHECKPOINT).is_file()  # killed before its first checkpoint: start over


def distill(cfg: DistillConfig, resume: bool = False, conch: TapBackbone | None = None,
            progress: bool = True) -> DistillResult:
    _validate(cfg)
    out = Path(cfg.out)
    resuming = _check_out(cfg, resume)
    run_meta, classes, _, prep = head_run_meta(Path(cfg.run), "distill --run")
    check_classes(Path(cfg.run), classes, load_classes(cfg.classes), cfg.classes)
    tile_size = prep["tile_size"]
    source = split_source(Path(cfg.data), "train", classes, tile_size)
    val_source = split_source(Path(cfg.data), "valid", classes, tile_size, with_masks=True)
    store = (open_targets(Path(cfg.targets), source.samples, classes) if cfg.targets is not None
             else make_targets(cfg, source, conch, progress))
    device = resolve_device(cfg.device)
    with seeded_init(cfg.seed):
        student = build_student(cfg.arch, cfg.encoder, len(classes) + 1,
                                "none" if resuming else cfg.encoder_weights).to(device)
    log_vars = torch.zeros(len(TERMS), device=device, requires_grad=True) if cfg.weighting == "uncertainty" else None
    params = list(student.parameters()) + ([log_vars] if log_vars is not None else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dataset = TargetSet(source.samples, store, tile_size)
    n_batches = math.ceil(len(dataset) / cfg.batch_size)
    total_steps = cfg.epochs * n_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, total_steps))
    spec = {**cfg.student_dict(), "n_channels": len(classes) + 1}
    state = {"epoch": 0, "best_miou": None, "history": []}
    if resuming:
        ckpt = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
        student.load_state_dict(ckpt["student"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if log_vars is not None:
            log_vars.data.copy_(ckpt["log_vars"])
        state = ckpt["state"]
    elif not resume or not (out / RUN_CONFIG).is_file():
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, _run_record(cfg, spec, classes, tile_size, store, run_meta))
    n_parameters = sum(p.numel() for p in student.parameters())
    start = time.perf_counter()
    final_loss = float("nan")
    student.train()
    for epoch in range(state["epoch"], cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch, 1])
        batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch)
        sums = {k: 0.0 for k in ("loss", *TERMS)}
        bar = tqdm(target_loader(dataset, batches, cfg.workers), total=len(batches), unit="batch",
                   desc=f"distill epoch {epoch + 1}/{cfg.epochs}", disable=not progress, dynamic_ncols=True)
        for raw in bar:
            batch = augment(to_device(raw, device), rng)
            loss, terms = objective(student, batch, cfg, log_vars)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            final_loss = float(loss.detach())
            for k, v in (("loss", loss), *terms.items()):
                sums[k] += float(v.detach()) / len(batches)
            bar.set_postfix(loss=f"{final_loss:.4f}")
        val = validate_student(student, val_source, classes, tile_size, device)
        record = {"epoch": epoch + 1, **{k: round(v, 6) for k, v in sums.items()}, "lr": scheduler.get_last_lr()[0],
                  "val_mIoU": val["mIoU"], "val_mDice": val["mDice"]}
        if log_vars is not None:
            record["log_vars"] = dict(zip(TERMS, log_vars.detach().cpu().tolist()))
        state["history"].append(record)
        save_student(student, out / STUDENT_FILES["last"], spec)
        if state["best_miou"] is None or val["mIoU"] > state["best_miou"]:
            state["best_miou"] = val["mIoU"]
            save_student(student, out / STUDENT_FILES["best"], spec)
        state["epoch"] = epoch + 1
        write_text_atomic(out / METRICS, "".join(json.dumps(r) + "\n" for r in state["history"]))
        with atomic_output(out / CHECKPOINT) as tmp:
            torch.save({"student": student.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "log_vars": log_vars, "state": state}, tmp)
        if progress:
            tqdm.write(f"epoch {epoch + 1}: loss {sums['loss']:.4f}  val mIoU {val['mIoU']:.2f}")
    return DistillResult(out, store.path, n_parameters, state["best_miou"], final_loss,
                         time.perf_counter() - start)


def _run_record(cfg: DistillConfig, spec: dict, classes, tile_size: int, store: ScoreStore, run_meta: dict) -> dict:
    teacher_random = bool(run_meta.get("store", {}).get("random_weights", False))
    return {
        "kind": STUDENT_KIND, "student": spec, "classes": classes.to_dict(), "tile_size": tile_size,
        "distill": cfg.to_dict(), "random_weights": teacher_random,
        "teacher": {"run": str(Path(cfg.run).resolve()), "targets": str(Path(store.path).resolve()),
                    "head_fingerprint": store.compat.get("head_fingerprint"),
                    "conch_fingerprint": store.compat.get("conch_fingerprint")},
    }
