"""`construct distill`: teacher targets → student training (AdamW, cosine schedule, validation mIoU per
epoch, best kept, atomic safetensors, `--resume` at epoch boundaries; DDP under torchrun, as `train`)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from construct.atomic import atomic_output, write_text_atomic
from construct.seeding import seeded_init
from construct.data.classes import load_classes
from construct.data.sources import split_source
from construct.distill.config import WEIGHTINGS, DistillConfig
from construct.distributed import World, session
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
from construct.runtime import PRECISION_CHOICES, autocast, resolve_precision
from construct.store.in_memory import gib
from construct.train.ddp import BatchShare, convert_sync_batchnorm, wrap

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
    if cfg.precision is not None and cfg.precision not in PRECISION_CHOICES:
        raise ConstructError(f"--precision {cfg.precision}: expected one of {', '.join(PRECISION_CHOICES)}")
    if cfg.crop is not None and (cfg.crop < 32 or cfg.crop % 32):
        raise ConstructError(f"--crop {cfg.crop}: must be a multiple of 32 (the students' output stride)")


def objective(student: Student, batch: dict[str, torch.Tensor], cfg: DistillConfig,
              log_vars: torch.Tensor | None, precision: str = "fp32") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The total loss of one (augmented) batch and its terms: the student's forward at `precision`, the
    losses in fp32."""
    images = batch["images01"]
    with autocast(images.device, precision):
        logits = student(images)
    logits = logits.float()
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


def validate_student(student: Student, source, classes, tile_size: int, device: torch.device,
                     precision: str = "fp32") -> dict:
    """mIoU/mDice (%) of the student's argmax masks on the valid split under the paper's `gt` gate."""
    was_training = student.training
    sink = ConfusionSink(classes)
    run_inference(source, StudentPredictor(student, classes, tile_size, device=device, precision=precision), [sink],
                  "gt", batch_size=16, progress=False)
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


class Objective(nn.Module):
    """The student and the learned uncertainty weights in one module, so that DistributedDataParallel
    averages the gradients of both."""

    def __init__(self, student: Student, cfg: DistillConfig, precision: str = "fp32"):
        super().__init__()
        self.student = student
        self.cfg = cfg
        self.precision = precision
        self.log_vars = nn.Parameter(torch.zeros(len(TERMS))) if cfg.weighting == "uncertainty" else None

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return objective(self.student, batch, self.cfg, self.log_vars, self.precision)


def distill(cfg: DistillConfig, resume: bool = False, conch: TapBackbone | None = None,
            progress: bool = True) -> DistillResult:
    """Make (or reuse) the teacher targets and train a student run. Under torchrun the processes share each
    batch in DDP; rank 0 alone makes the targets, validates and writes the run folder."""
    _validate(cfg)
    with session(cfg.device) as (world, device):
        return _distill(cfg, resume, conch, progress and world.is_main, world, device)


def _distill(cfg: DistillConfig, resume: bool, conch: TapBackbone | None, progress: bool, world: World,
             device: torch.device) -> DistillResult:
    out = Path(cfg.out)
    if cfg.batch_size < world.world_size:
        raise ConstructError(f"--batch-size {cfg.batch_size} is the global batch, shared by {world.world_size} "
                             f"processes: it must be at least one tile per process")
    resuming = world.on_main(lambda: _check_out(cfg, resume))
    run_meta, classes, _, prep = head_run_meta(Path(cfg.run), "distill --run")
    check_classes(Path(cfg.run), classes, load_classes(cfg.classes), cfg.classes)
    tile_size = prep["tile_size"]
    source = split_source(Path(cfg.data), "train", classes, tile_size)
    val_source = split_source(Path(cfg.data), "valid", classes, tile_size, with_masks=True)
    store = ScoreStore.open(world.on_main(lambda: (
        open_targets(Path(cfg.targets), source.samples, classes) if cfg.targets is not None
        else make_targets(cfg, source, conch, progress)).path))
    precision = resolve_precision(cfg.precision, device)
    with seeded_init(cfg.seed):
        student = build_student(cfg.arch, cfg.encoder, len(classes) + 1,
                                "none" if resuming else cfg.encoder_weights)
        model = Objective(student, cfg, precision)
    if world.spread:
        convert_sync_batchnorm(model)
    model = model.to(device)
    student = model.student
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    store.keep_in_memory(gib(cfg.memory_gb))
    dataset = TargetSet(source.samples, store, tile_size)
    n_batches = len(epoch_batches(len(dataset), cfg.batch_size, cfg.seed, 0, world.world_size))
    total_steps = cfg.epochs * n_batches
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, total_steps))
    spec = {**cfg.student_dict(), "n_channels": len(classes) + 1}
    state = {"epoch": 0, "best_miou": None, "history": []}
    if resuming:
        ckpt = torch.load(out / CHECKPOINT, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
    elif world.is_main and (not resume or not (out / RUN_CONFIG).is_file()):
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, {**_run_record(cfg, spec, classes, tile_size, store, run_meta), "precision": precision})
    ddp = wrap(model, world, device)
    n_parameters = sum(p.numel() for p in student.parameters())
    start = time.perf_counter()
    final_loss = float("nan")
    model.train()
    for epoch in range(state["epoch"], cfg.epochs):
        rng = np.random.default_rng([cfg.seed, epoch, 1, world.rank])
        batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, world.world_size)
        shares = [BatchShare(len(b), world) for b in batches]
        local = [b[share.rows()] for b, share in zip(batches, shares)]
        sums = {k: 0.0 for k in ("loss", *TERMS)}
        bar = tqdm(zip(target_loader(dataset, local, cfg.workers), shares), total=len(batches), unit="batch",
                   desc=f"distill epoch {epoch + 1}/{cfg.epochs}", disable=not progress, dynamic_ncols=True)
        for raw, share in bar:
            batch = augment(to_device(raw, device), rng, cfg.crop)
            loss, terms = ddp(batch)
            optimizer.zero_grad(set_to_none=True)
            (loss * share.weight(len(raw["images"]))).backward()
            optimizer.step()
            scheduler.step()
            values = share.values({"loss": loss, **terms})
            final_loss = values["loss"]
            for k, v in values.items():
                sums[k] += v / len(batches)
            bar.set_postfix(loss=f"{final_loss:.4f}")
        if world.is_main:
            _end_epoch(cfg, out, epoch, model, optimizer, scheduler, state, sums, spec,
                       validate_student(student, val_source, classes, tile_size, device, precision), progress)
        state = world.broadcast(state)
    return DistillResult(out, store.path, n_parameters, state["best_miou"], final_loss,
                         time.perf_counter() - start)


def _end_epoch(cfg, out, epoch, model, optimizer, scheduler, state, sums, spec, val, progress) -> None:
    """Record the epoch, keep the last and the best student, and checkpoint (rank 0)."""
    record = {"epoch": epoch + 1, **{k: round(v, 6) for k, v in sums.items()},
              "lr": scheduler.get_last_lr()[0], "val_mIoU": val["mIoU"], "val_mDice": val["mDice"]}
    if model.log_vars is not None:
        record["log_vars"] = dict(zip(TERMS, model.log_vars.detach().cpu().tolist()))
    state["history"].append(record)
    save_student(model.student, out / STUDENT_FILES["last"], spec)
    if state["best_miou"] is None or val["mIoU"] > state["best_miou"]:
        state["best_miou"] = val["mIoU"]
        save_student(model.student, out / STUDENT_FILES["best"], spec)
    state["epoch"] = epoch + 1
    write_text_atomic(out / METRICS, "".join(json.dumps(r) + "\n" for r in state["history"]))
    with atomic_output(out / CHECKPOINT) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state}, tmp)
    if progress:
        tqdm.write(f"epoch {epoch + 1}: loss {sums['loss']:.4f}  val mIoU {val['mIoU']:.2f}")


def _run_record(cfg: DistillConfig, spec: dict, classes, tile_size: int, store: ScoreStore, run_meta: dict) -> dict:
    teacher_random = bool(run_meta.get("store", {}).get("random_weights", False))
    return {
        "kind": STUDENT_KIND, "student": spec, "classes": classes.to_dict(), "tile_size": tile_size,
        "distill": cfg.to_dict(), "random_weights": teacher_random,
        "teacher": {"run": str(Path(cfg.run).resolve()), "targets": str(Path(store.path).resolve()),
                    "head_fingerprint": store.compat.get("head_fingerprint"),
                    "conch_fingerprint": store.compat.get("conch_fingerprint")},
    }
