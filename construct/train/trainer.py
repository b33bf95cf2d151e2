"""`construct train`: learn the head from a feature store only (no backbone is ever loaded)."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from construct.ddp import BatchShare, convert_sync_batchnorm, wrap
from construct.distributed import World, all_reduce_sum, env_world, process_device, session
from construct.errors import ConstructError
from construct.head.io import save_head
from construct.head.model import ConStructHead, HeadConfig
from construct.head.pooler import ContrastiveHead
from construct.runs import (
    HEAD_KIND,
    WEIGHT_FILES,
    is_run,
    load_checkpoint,
    read_kind,
    read_run_config,
    save_checkpoint,
    write_metrics,
    write_run_config,
)
from construct.runtime import resolve_precision
from construct.seeding import seeded_init
from construct.stain.runs import RUN_KEY, store_reference
from construct.store import FeatureStore
from construct.store.in_memory import gib
from construct.train.augment import apply_symmetries, draw_symmetries
from construct.train.config import TrainConfig
from construct.train.data import batch_loader, epoch_batches
from construct.train.losses import MemoryBank
from construct.train.objective import CONTRAST_TOKENS, compute_losses, teacher_tap
from construct.train.validate import validate
from construct.train.weighting import LossWeighting

CHECKPOINT = "checkpoint.pt"
HEAD_FILES = WEIGHT_FILES[HEAD_KIND]
LOG = "train.log"
log = logging.getLogger("construct.train")
# Positive examples of the rarest class a plan must show the classifier, below which `train` warns. On the
# real-pixel check (benchmarks/README.md) the head stopped improving well above this.
MIN_CLASS_EXAMPLES = 2000


@dataclass
class TrainResult:
    run: Path
    n_trainable: int
    final_loss: float
    best_miou: float | None
    seconds: float


def _head_config(cfg: TrainConfig, store: FeatureStore) -> HeadConfig:
    if not store.has(CONTRAST_TOKENS):
        raise ConstructError(f"{store.path}: store lacks {CONTRAST_TOKENS}, which gives the head its token grid "
                             f"(re-extract with CONCH block 12)")
    n_tokens, width = store.shape(CONTRAST_TOKENS)
    return HeadConfig(
        n_classes=len(store.classes), width=width, embed_dim=store.text_embeddings.shape[1],
        cam_levels=cfg.cam_levels, bce_weights=cfg.bce_weights, fuse_weights=cfg.fuse_weights,
        distill_levels=cfg.distill_levels, n_ratio=cfg.n_ratio, grid=int(math.isqrt(n_tokens)),
        align_corners=cfg.cam_align_corners,
    )


def _check_stores(cfg: TrainConfig, store: FeatureStore, val: FeatureStore | None, needed: list[str]) -> None:
    missing = [n for n in needed if not store.has(n)]
    if missing:
        raise ConstructError(f"{store.path}: store lacks {', '.join(missing)} needed by this training "
                             f"(re-extract with those taps, or disable the loss that needs them)")
    if store.n_rows < 2:
        raise ConstructError(f"{store.path}: store has {store.n_rows} rows; training needs at least 2")
    if val is None:
        return
    if val.classes.to_dict() != store.classes.to_dict():
        raise ConstructError(f"{val.path}: validation store has different classes from {store.path}")
    fp = {k: r.fingerprint for k, r in store.recipes.items()}
    if {k: r.fingerprint for k, r in val.recipes.items()} != fp:
        raise ConstructError(f"{val.path}: validation store was extracted with different backbones from {store.path}")
    if not val.has("mask"):
        raise ConstructError(f"{val.path}: validation store has no ground-truth masks (extract the valid split)")
    if val.n_rows < 1:
        raise ConstructError(f"{val.path}: validation store has 0 rows")
    for name in needed:
        if name.startswith("conch_") and (not val.has(name) or val.shape(name) != store.shape(name)):
            found = f"shape {val.shape(name)}" if val.has(name) else "missing"
            raise ConstructError(f"{val.path}: validation store's {name} is {found}, the train store's is "
                                 f"{store.shape(name)} (extract both with the same --image-size and taps)")


def _stain_reference(store: FeatureStore) -> dict | None:
    """The training tiles' stain reference (construct.stain), recorded with the run for inference."""
    ref = store_reference(store)
    return ref.to_dict() if ref is not None else None


def _check_resumed_store(run: Path, store: FeatureStore) -> None:
    """A resumed run must read the features it started with (the store may have been re-extracted)."""
    meta = read_run_config(run)
    was = {k: v.get("fingerprint") for k, v in meta.get("backbones", {}).items()}
    now = {k: r.fingerprint for k, r in store.recipes.items()}
    if was != now or meta.get("store", {}).get("n_rows") != store.n_rows:
        raise ConstructError(f"{store.path}: is not the store {run} was started on (backbones or rows differ); "
                             f"resume with the same features or start a new run")


def _to_maps(batch: dict[str, torch.Tensor], grid: int, device: torch.device) -> dict[str, torch.Tensor]:
    maps = {}
    for k, v in batch.items():
        if k == "labels":
            continue
        v = v.to(device)
        maps[k] = v.transpose(1, 2).reshape(v.shape[0], v.shape[2], grid, grid) if v.ndim == 3 else v
    return maps


def _setup_logging(run: Path) -> logging.Handler:
    handler = logging.FileHandler(run / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True, alone: bool = False) -> TrainResult:
    """Train (or resume) a run. Under torchrun the processes share each batch in DDP and take the step one
    process would; rank 0 alone writes the run folder. `alone`: this process trains the run by itself
    (on its torchrun device), as `construct ablate` has each process train its own variants."""
    if alone:
        return _start(cfg, resume, progress, World(), process_device(cfg.device, env_world()))
    with session(cfg.device) as (world, device):
        return _start(cfg, resume, progress and world.is_main, world, device)


def _start(cfg: TrainConfig, resume: bool, progress: bool, world: World, device: torch.device) -> TrainResult:
    if cfg.batch_size < world.world_size:
        raise ConstructError(f"--batch-size {cfg.batch_size} is the global batch, shared by {world.world_size} "
                             f"processes: it must be at least one row per process")
    store = FeatureStore.open(cfg.features)
    val = FeatureStore.open(cfg.val_features) if cfg.val_features else None
    hc = _head_config(cfg, store)
    needed = [f"conch_b{b}" for b in hc.blocks()]
    needed += [teacher_tap(k) for k in hc.distill_levels] if cfg.distill else []
    _check_stores(cfg, store, val, needed)
    run = Path(cfg.out)
    ckpt_path = run / CHECKPOINT
    if resume and is_run(run):
        read_kind(run, HEAD_KIND, "train --resume")
    if resume and not ckpt_path.is_file():
        if not is_run(run):
            raise ConstructError(f"{run}: nothing to resume (no {CHECKPOINT})")
        # Killed before its first checkpoint: nothing was kept, so the run starts over.
        resume, restart = False, True
    else:
        restart = False
    if resume:
        _check_resumed_store(run, store)
    if not resume and not restart and is_run(run):
        raise ConstructError(f"{run}: already holds a run; use --resume to continue it or choose another --out")
    world.barrier()  # every process has checked the run folder before rank 0 writes into it
    if not world.is_main:
        return _train(cfg, store, val, hc, run, device, resume, progress, world)
    run.mkdir(parents=True, exist_ok=True)
    handler = _setup_logging(run)
    try:
        return _train(cfg, store, val, hc, run, device, resume, progress, world)
    finally:
        log.removeHandler(handler)
        handler.close()


def _train(cfg, store, val, hc, run, device, resume, progress, world: World) -> TrainResult:
    text = torch.from_numpy(store.text_embeddings) if cfg.text_init else None
    precision = resolve_precision(cfg.precision, device)
    with seeded_init(cfg.seed):
        head = ConStructHead(hc, text).to(device)
    if world.spread:
        convert_sync_batchnorm(head)  # batch-norm statistics of the global batch, not of each process's part
    chead = ContrastiveHead.from_state_dict(
        {k: torch.from_numpy(v) for k, v in store.contrastive_head_state().items()}).to(device)
    chead.requires_grad_(False).eval()
    bank = MemoryBank(cfg.bank_size, hc.embed_dim, cfg.bank_init, cfg.seed) if cfg.contrast else None
    per_epoch = len(epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 0))
    total_steps = cfg.total_steps(per_epoch)
    weighting = LossWeighting(cfg, total_steps).to(device)
    params = [p for p in head.parameters() if p.requires_grad]
    opt = build_optimizer(cfg, params, weighting)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
        lr_factor, total=total_steps, warmup=round(cfg.warmup * total_steps), power=cfg.poly_power))
    n_trainable = head.n_trainable()
    # Everything a resumed run needs to continue as if never stopped, metrics included.
    state = {"global_step": 0, "best": None, "sums": {}, "records": []}
    if resume:
        ck = load_checkpoint(run / CHECKPOINT, device)
        head.load_state_dict(ck["head"])
        weighting.load_state_dict(ck["weighting"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        if bank is not None and ck.get("bank") is not None:
            bank.load_state_dict(ck["bank"])
        state = {"sums": {}, "records": [], **ck["state"]}
        log.info("resumed at step %d", state["global_step"])
    elif world.is_main:
        write_run_config(run, {
            "train": cfg.to_dict(), "head": hc.to_dict(), "n_trainable": n_trainable, "precision": precision,
            "schedule": {"steps": total_steps, "batches_per_epoch": per_epoch},
            "classes": store.classes.to_dict(),
            "backbones": {k: r.to_dict() for k, r in store.recipes.items()},
            "store": {"path": str(Path(cfg.features).resolve()), "n_rows": store.n_rows,
                      "random_weights": store.random_weights, "layout": store.layout.to_dict(),
                      "preprocessing": store.meta["preprocessing"]},
            RUN_KEY: _stain_reference(store),
        })
    plan = describe_plan(cfg, store, per_epoch, total_steps, n_trainable)
    for line in plan:
        log.info(line)
        if progress:
            tqdm.write(line)

    names = sorted(set(head.input_taps) | ({CONTRAST_TOKENS} if cfg.contrast else set())
                   | ({teacher_tap(k) for k in hc.distill_levels} if cfg.distill else set()))
    start = time.perf_counter()
    last_loss = state["records"][-1]["loss_total"] if state["records"] else float("nan")
    model = wrap(head, world, device)
    workers, source = cfg.loader_workers(device.type), cfg.features
    budget = gib(cfg.memory_gb)
    if store.keep_in_memory(names, budget):
        workers, source = 0, store  # slicing RAM needs no loader process
    if val is not None:
        val.keep_in_memory(head.input_taps + ("mask",), budget)
    every = cfg.record_every(per_epoch)
    head.train()
    bar = tqdm(total=total_steps, initial=state["global_step"], desc="train", unit="step", disable=not progress,
               dynamic_ncols=True)
    for step, batch, share in _steps(cfg, source, store.n_rows, per_epoch, total_steps, state["global_step"],
                                     names, workers, world):
        maps = _to_maps(batch, hc.grid, device)
        if cfg.augment:
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            maps = apply_symmetries(maps, draw_symmetries(share.n_rows, g)[share.rows()])
        labels = batch["labels"].to(device)
        # The forward pass moves the batch-norm statistics: keep them to undo a step that goes bad.
        buffers = {k: v.detach().clone() for k, v in head.named_buffers()}
        losses = compute_losses(model, chead, maps, labels, cfg, bank, share, weighting, step, precision)
        values = share.values(losses)  # the whole batch's, so every process takes the same decisions
        bad = None if math.isfinite(values["total"]) else f"loss became {values['total']}"
        if bad is None:
            opt.zero_grad(set_to_none=True)
            losses["total"].backward()
            if weighting.learned and world.spread:  # outside DDP: average its gradient as DDP does the head's
                weighting.log_vars.grad = all_reduce_sum(weighting.log_vars.grad) / world.world_size
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            if not torch.isfinite(grad_norm):
                bad = f"gradient became {grad_norm.item()} (loss {values['total']:.4g})"
        if bad is not None:
            _stop_on_nonfinite(run, head, buffers, values, bad, step // per_epoch, step % per_epoch,
                               save=world.is_main)
        weights = weighting.weights(step)
        opt.step()
        sched.step()
        state["global_step"] = step + 1
        for k, v in values.items():
            state["sums"][k] = state["sums"].get(k, 0.0) + v
        last_loss = values["total"]
        bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
        bar.update(1)
        if world.is_main and (step + 1) % cfg.log_every == 0:
            log.info(json.dumps({"step": step + 1, "lr": sched.get_last_lr()[0],
                                 **{f"loss_{k}": round(v, 6) for k, v in values.items()},
                                 **{f"w_{k}": round(weights[k], 6) for k in values if k in weights}}))
        if (step + 1) % every == 0 or step + 1 == total_steps:
            if world.is_main:
                _record(run, head, weighting, opt, sched, bank, val, device, state, every, per_epoch, weights,
                        start, progress, precision)
            state = world.broadcast(state)  # the other processes wait for rank 0's validation and records
        elif world.is_main and (step + 1) % cfg.checkpoint_every == 0:
            _save_checkpoint(run, head, weighting, opt, sched, bank, state)
    bar.close()
    return TrainResult(run, n_trainable, last_loss, state["best"], time.perf_counter() - start)


def lr_factor(step: int, total: int, warmup: int, power: float) -> float:
    """The lr multiplier after `step` steps: linear warm-up over `warmup` steps, then poly decay to 0 at
    `total` ((1 - progress) ** power, progress counted from the end of the warm-up)."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, 1 - (step - warmup) / max(1, total - warmup)) ** power


def _steps(cfg: TrainConfig, source: str | FeatureStore, n_rows: int, per_epoch: int, total: int, first: int,
           names: list[str], workers: int, world: World):
    """(global step, this process's part of its batch, its share) from `first` to `total`: epochs of seeded
    permutations, the last one cut short where the step budget ends."""
    for epoch in range(first // per_epoch, math.ceil(total / per_epoch)):
        batches = epoch_batches(n_rows, cfg.batch_size, cfg.seed, epoch)
        lo, hi = max(first - epoch * per_epoch, 0), min(total - epoch * per_epoch, per_epoch)
        shares = [BatchShare(len(b), world) for b in batches[lo:hi]]
        mine = [b[sh.rows()] for b, sh in zip(batches[lo:hi], shares)]  # each process reads its part
        for i, batch in enumerate(batch_loader(source, names, mine, workers)):
            yield epoch * per_epoch + lo + i, batch, shares[i]


def describe_plan(cfg: TrainConfig, store: FeatureStore, per_epoch: int, total: int, n_trainable: int) -> list[str]:
    """The one-line plan printed at start, and a warning when it is too short to learn every class."""
    epochs = total / per_epoch
    warmup = round(cfg.warmup * total)
    terms = [f"cls {cfg.w_cls:g}"] + [f"{name} {w:g}" for name, w, on in (
        ("distill", cfg.w_distill, cfg.distill), ("contrast", cfg.w_contrast, cfg.contrast)) if on]
    ramp = f", ramped in over {round(cfg.aux_ramp * total)} steps" if cfg.aux_ramp and len(terms) > 1 else ""
    lines = [f"plan: {store.n_rows} tiles, batch {cfg.batch_size}, {total} steps ({epochs:.3g} epochs), "
             f"lr {cfg.lr:g} ({cfg.optimizer}, warm-up {warmup} steps, poly {cfg.poly_power:g}), "
             f"loss weights {cfg.loss_weighting}"
             f"{f' (lr {cfg.loss_weighting_lr:g})' if cfg.loss_weighting == 'uncertainty' else ''}: "
             f"{', '.join(terms)}{ramp}; "
             f"{n_trainable:,} trainable parameters"]
    counts = store.labels.sum(axis=0).astype(int)
    seen = counts * total * cfg.batch_size / max(1, store.n_rows)  # positive examples of each class over the plan
    rare = int(seen.argmin())
    if counts[rare] > 0 and seen[rare] < MIN_CLASS_EXAMPLES:
        need = math.ceil(MIN_CLASS_EXAMPLES * store.n_rows / (counts[rare] * cfg.batch_size))
        lines.append(f"WARNING: this plan is too short to learn every class: {store.classes.names[rare]} "
                     f"({counts[rare]} tiles) is seen {seen[rare]:.0f} times, fewer than {MIN_CLASS_EXAMPLES:,}; "
                     f"use --steps {need} or more")
    return lines


def build_optimizer(
    cfg: TrainConfig, params: list[torch.nn.Parameter], weighting: LossWeighting,
) -> torch.optim.Optimizer:
    """The head's parameters at `lr`; learned log-variances, when trained, in a group of their own at
    `loss_weighting_lr` and without weight decay (which would pull each weight back towards 1)."""
    groups = [{"params": params}]
    learned = [p for p in weighting.parameters() if p.requires_grad]
    if learned:
        groups.append({"params": learned, "lr": cfg.loss_weighting_lr, "weight_decay": 0.0})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _record(run: Path, head, weighting, opt, sched, bank, val, device, state: dict, every: int, per_epoch: int,
            weights: dict[str, float], start: float, progress: bool, precision: str) -> None:
    """Rank 0, every `every` steps and at the end: last (and best) head, a metrics record, a checkpoint."""
    step = state["global_step"]
    n = (step - 1) % every + 1  # steps since the previous record
    record = {"step": step, "epoch": round(step / per_epoch, 3), "lr": sched.get_last_lr()[0],
              **{f"loss_{k}": v / n for k, v in state["sums"].items()},
              **{f"w_{k}": weights[k] for k in state["sums"] if k in weights},
              "seconds": time.perf_counter() - start}
    save_head(head, run / HEAD_FILES["last"])
    if val is not None:
        v = validate(head, val, device, precision=precision)
        record.update({f"val_{k}": v[k] for k in ("mIoU", "mDice", "FwIoU")}, val_IoU=v["IoU"])
        if state["best"] is None or v["mIoU"] > state["best"]:
            state["best"] = v["mIoU"]
            save_head(head, run / HEAD_FILES["best"])
    state["sums"] = {}
    state["records"] = [*state["records"], record]
    write_metrics(run, state["records"])
    _save_checkpoint(run, head, weighting, opt, sched, bank, state)
    log.info(json.dumps(record))
    if progress:
        terms = ", ".join(f"{k}={v:.4f}" for k, v in record.items()
                          if isinstance(v, float) and k not in ("seconds", "epoch"))
        tqdm.write(f"step {step}: {terms}")


def _save_checkpoint(run: Path, head, weighting, opt, sched, bank, state: dict) -> None:
    ck = {"head": head.state_dict(), "weighting": weighting.state_dict(), "optim": opt.state_dict(),
          "sched": sched.state_dict(),
          "bank": bank.state_dict() if bank is not None else None, "state": dict(state)}
    save_checkpoint(run / CHECKPOINT, ck)


def _stop_on_nonfinite(run: Path, head, buffers: dict, losses: dict[str, float], what: str, epoch: int, step: int,
                       save: bool) -> None:
    """Save the weights from before this step (undoing its batch-norm update) and stop in one line."""
    with torch.no_grad():
        for name, buf in head.named_buffers():
            buf.copy_(buffers[name])
    if save:
        save_head(head, run / HEAD_FILES["last"])
    terms = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
    raise ConstructError(f"{what} at epoch {epoch + 1} step {step + 1} ({terms}); training stopped, "
                         f"last good weights kept in {run / HEAD_FILES['last']}")
