"""`construct distill`: teacher targets → student training (AdamW, cosine schedule, validation mIoU per
epoch, best kept, atomic safetensors, `--resume` at epoch boundaries; DDP under torchrun, as `train`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from construct.data.classes import load_classes
from construct.data.sources import split_source
from construct.ddp import BatchShare, convert_sync_batchnorm, wrap
from construct.distill.config import WEIGHTINGS, DistillConfig
from construct.distill.data import TargetSet, augment, epoch_batches, target_loader, to_device
from construct.distill.losses import boundary_ce, boundary_weights, fixed_weighted, soft_mse, uncertainty_weighted
from construct.distill.targets import check_classes, make_targets, open_targets
from construct.distributed import World, session
from construct.errors import ConstructError
from construct.inference.head import TapBackbone
from construct.inference.pipeline import run_inference
from construct.inference.score_store import ScoreStore
from construct.inference.sinks import ConfusionSink
from construct.inference.student import StudentPredictor
from construct.metrics import scores as metric_scores
from construct.runs import (
    RUN_CONFIG,
    STUDENT_KIND,
    WEIGHT_FILES,
    head_run_meta,
    is_run,
    load_checkpoint,
    read_kind,
    save_checkpoint,
    write_metrics,
    write_run_config,
)
from construct.runtime import autocast, check_precision, resolve_precision
from construct.seeding import seeded_init
from construct.stain.augment import hed_jitter, lab_jitter
from construct.stain.normalize import check_method
from construct.stain.runs import RUN_KEY as STAIN_RUN_KEY
from construct.stain.runs import TEACHER_KEY, reference_of_files, reference_of_run
from construct.store.in_memory import gib
from construct.student.io import save_student
from construct.student.model import Student, build_student, check_names

CHECKPOINT = "distill_checkpoint.pt"
STUDENT_FILES = WEIGHT_FILES[STUDENT_KIND]
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
    if cfg.epochs <= 0 or cfg.batch_size < 1:
        raise ConstructError("--epochs must be positive and --batch-size at least 1")
    if cfg.lr <= 0:
        raise ConstructError(f"--lr {cfg.lr}: must be positive")
    check_method(cfg.stain_norm)
    for flag, strength in (("--stain-augment", cfg.stain_augment), ("--lab-augment", cfg.lab_augment)):
        if not 0.0 <= strength <= 1.0:
            raise ConstructError(f"{flag} {strength}: expected a strength in [0, 1]")
    check_precision(cfg.precision)
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
        if is_run(out):
            raise ConstructError(f"{out}: already holds a run; use --resume to continue it or choose another --out")
        return False
    if not is_run(out):
        raise ConstructError(f"{out}: nothing to resume (no {RUN_CONFIG})")
    meta = read_kind(out, STUDENT_KIND, "distill --resume")
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
    with session(cfg.device) as (world, device), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
    # --epochs may be fractional, as train's: the last epoch stops after its share of the batches.
    total_steps = math.ceil(cfg.epochs * n_batches)
    n_epochs = math.ceil(total_steps / n_batches)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine(step, total_steps))
    spec = {**cfg.student_dict(), "n_channels": len(classes) + 1}
    state = {"epoch": 0, "best_miou": None, "history": []}
    if resuming:
        ckpt = load_checkpoint(out / CHECKPOINT, device)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state = ckpt["state"]
    elif world.is_main and (not resume or not is_run(out)):
        out.mkdir(parents=True, exist_ok=True)
        write_run_config(out, {**_run_record(cfg, spec, classes, tile_size, store, run_meta, source.samples),
                               "precision": precision})
    ddp = wrap(model, world, device)
    n_parameters = sum(p.numel() for p in student.parameters())
    start = time.perf_counter()
    final_loss = float("nan")
    model.train()
    for epoch in range(state["epoch"], n_epochs):
        rng = np.random.default_rng([cfg.seed, epoch, 1, world.rank])
        # Dropout draws from torch's own generator (inside `distill`'s fork, so the caller's is untouched):
        # seeded per epoch, a run is repeatable and a resumed one draws as the uninterrupted one did.
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, epoch, 2, world.rank]).generate_state(1)[0]))
        batches = epoch_batches(len(dataset), cfg.batch_size, cfg.seed, epoch, world.world_size)
        batches = batches[:total_steps - epoch * n_batches]
        shares = [BatchShare(len(b), world) for b in batches]
        local = [b[share.rows()] for b, share in zip(batches, shares)]
        sums = {k: 0.0 for k in ("loss", *TERMS)}
        bar = tqdm(zip(target_loader(dataset, local, cfg.workers), shares), total=len(batches), unit="batch",
                   desc=f"distill epoch {epoch + 1}/{n_epochs}", disable=not progress, dynamic_ncols=True)
        stain_rng = torch.Generator().manual_seed(int(rng.integers(2**62)))
        for step, (raw, share) in enumerate(bar):
            batch = augment(to_device(raw, device), rng, cfg.crop)
            batch["images01"] = lab_jitter(hed_jitter(batch["images01"], cfg.stain_augment, stain_rng),
                                           cfg.lab_augment, stain_rng)
            loss, terms = ddp(batch)
            values = share.values({"loss": loss, **terms})  # the same on every process: all stop together
            if not math.isfinite(values["loss"]):
                _stop_on_nonfinite(out, values, epoch, step)
            optimizer.zero_grad(set_to_none=True)
            (loss * share.weight(len(raw["images"]))).backward()
            optimizer.step()
            scheduler.step()
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


def _stop_on_nonfinite(out: Path, values: dict[str, float], epoch: int, step: int) -> None:
    """Stop in one line before the step that would write non-finite weights; the run's checkpoint and
    students are those of the last finished epoch."""
    terms = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
    raise ConstructError(f"loss became {values['loss']} at epoch {epoch + 1} step {step + 1} ({terms}); "
                         f"distill stopped, {out} keeps the last finished epoch (lower --lr, or check the targets)")


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
    write_metrics(out, state["history"])
    save_checkpoint(out / CHECKPOINT, {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                       "scheduler": scheduler.state_dict(), "state": state})
    if progress:
        tqdm.write(f"epoch {epoch + 1}: loss {sums['loss']:.4f}  val mIoU {val['mIoU']:.2f}")


def _run_record(cfg: DistillConfig, spec: dict, classes, tile_size: int, store: ScoreStore, run_meta: dict,
                samples: list) -> dict:
    teacher_random = bool(run_meta.get("store", {}).get("random_weights", False))
    return {
        "kind": STUDENT_KIND, "student": spec, "classes": classes.to_dict(), "tile_size": tile_size,
        "distill": cfg.to_dict(), "random_weights": teacher_random,
        "teacher": {"run": str(Path(cfg.run).resolve()), "targets": str(Path(store.path).resolve()),
                    "head_fingerprint": store.compat.get("head_fingerprint"),
                    "conch_fingerprint": store.compat.get("conch_fingerprint")},
        **_stain_references(cfg, samples, tile_size),
    }


def _stain_references(cfg: DistillConfig, samples: list, tile_size: int) -> dict:
    """The student's own stain reference (its training tiles, un-normalised, as it saw them) and its
    teacher's; inference normalises to the first, falling back to the second."""
    teacher = reference_of_run(Path(cfg.run))
    own = reference_of_files([s.image_path for s in samples], f"train split of {cfg.data}", tile_size)
    return {STAIN_RUN_KEY: own.to_dict() if own is not None else None,
            TEACHER_KEY: teacher.to_dict() if teacher is not None else None}
