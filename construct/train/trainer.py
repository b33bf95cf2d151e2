"""`construct train`: learn the head from a feature store only (no backbone is ever loaded)."""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from construct.atomic import atomic_output, write_text_atomic
from construct.backbones.conch import ContrastiveHead
from construct.backbones.weights import seeded_init
from construct.distributed import World, session
from construct.errors import ConstructError
from construct.head.io import HEAD_FILES, RUN_CONFIG, read_run_config, save_head, write_run_config
from construct.head.model import ConStructHead, HeadConfig
from construct.inference.runs import HEAD_KIND, require_kind
from construct.store import FeatureStore
from construct.train.augment import apply_symmetries, draw_symmetries
from construct.train.config import TrainConfig
from construct.train.data import batch_loader, epoch_batches
from construct.train.ddp import BatchShare, convert_sync_batchnorm, wrap
from construct.train.losses import MemoryBank
from construct.train.objective import CONTRAST_TOKENS, compute_losses, teacher_tap
from construct.train.validate import validate

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
LOG = "train.log"
log = logging.getLogger("construct.train")


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


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train (or resume) a run. Under torchrun the processes share each batch in DDP and take the step one
    process would; rank 0 alone writes the run folder."""
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
    if resume and (run / RUN_CONFIG).is_file():
        require_kind(run, read_run_config(run), HEAD_KIND, "train --resume")
    if resume and not ckpt_path.is_file():
        if not (run / RUN_CONFIG).is_file():
            raise ConstructError(f"{run}: nothing to resume (no {CHECKPOINT})")
        # Killed before its first checkpoint: nothing was kept, so the run starts over.
        resume, restart = False, True
    else:
        restart = False
    if resume:
        _check_resumed_store(run, store)
    if not resume and not restart and (run / RUN_CONFIG).exists():
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
    with seeded_init(cfg.seed):
        head = ConStructHead(hc, text).to(device)
    if world.spread:
        convert_sync_batchnorm(head)  # batch-norm statistics of the global batch, not of each process's part
    chead = ContrastiveHead.from_state_dict(
        {k: torch.from_numpy(v) for k, v in store.contrastive_head_state().items()}).to(device)
    chead.requires_grad_(False).eval()
    bank = MemoryBank(cfg.bank_size, hc.embed_dim) if cfg.contrast else None
    opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_batches = len(epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 0))
    total_steps = n_batches * cfg.epochs
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=total_steps, power=cfg.poly_power)
    n_trainable = head.n_trainable()
    # Everything a resumed run needs to continue as if never stopped, metrics included.
    state = {"epoch": 0, "step_in_epoch": 0, "global_step": 0, "best": None, "sums": {}, "records": []}
    if resume:
        ck = torch.load(run / CHECKPOINT, map_location=device, weights_only=True)
        head.load_state_dict(ck["head"])
        opt.load_state_dict(ck["optim"])
        sched.load_state_dict(ck["sched"])
        if bank is not None and ck.get("bank") is not None:
            bank.load_state_dict(ck["bank"])
        state = {"sums": {}, "records": [], **ck["state"]}
        log.info("resumed at epoch %d step %d", state["epoch"], state["step_in_epoch"])
    elif world.is_main:
        write_run_config(run, {
            "train": cfg.to_dict(), "head": hc.to_dict(), "n_trainable": n_trainable,
            "classes": store.classes.to_dict(),
            "backbones": {k: r.to_dict() for k, r in store.recipes.items()},
            "store": {"path": str(Path(cfg.features).resolve()), "n_rows": store.n_rows,
                      "random_weights": store.random_weights, "layout": store.layout.to_dict(),
                      "preprocessing": store.meta["preprocessing"]},
        })
    msg = f"trainable parameters: {n_trainable:,} ({n_trainable / 1e6:.2f}M)"
    log.info(msg)
    if progress:
        tqdm.write(msg)

    names = sorted(set(head.input_taps) | ({CONTRAST_TOKENS} if cfg.contrast else set())
                   | ({teacher_tap(k) for k in hc.distill_levels} if cfg.distill else set()))
    start = time.perf_counter()
    last_loss = state["records"][-1]["loss_total"] if state["records"] else float("nan")
    params = [p for p in head.parameters() if p.requires_grad]
    model = wrap(head, world, device)
    workers = cfg.loader_workers(device.type)
    for epoch in range(state["epoch"], cfg.epochs):
        batches = epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, epoch)
        shares = [BatchShare(len(b), world) for b in batches]
        skip = state["step_in_epoch"] if epoch == state["epoch"] else 0
        head.train()
        if skip == 0:
            state["sums"] = {}
        sums: dict[str, float] = state["sums"]
        bar = tqdm(total=len(batches), initial=skip, desc=f"train epoch {epoch + 1}/{cfg.epochs}",
                   unit="step", disable=not progress, dynamic_ncols=True)
        mine = [b[sh.rows()] for b, sh in zip(batches, shares)]  # each process reads its part of every batch
        for step, batch in enumerate(batch_loader(cfg.features, names, mine[skip:], workers), start=skip):
            share = shares[step]
            maps = _to_maps(batch, hc.grid, device)
            if cfg.augment:
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + state["global_step"])
                maps = apply_symmetries(maps, draw_symmetries(share.n_rows, g)[share.rows()])
            labels = batch["labels"].to(device)
            # The forward pass moves the batch-norm statistics: keep them to undo a step that goes bad.
            buffers = {k: v.detach().clone() for k, v in head.named_buffers()}
            losses = compute_losses(model, chead, maps, labels, cfg, bank, share)
            values = share.values(losses)  # the whole batch's, so every process takes the same decisions
            bad = None if math.isfinite(values["total"]) else f"loss became {values['total']}"
            if bad is None:
                opt.zero_grad(set_to_none=True)
                losses["total"].backward()
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
                if not torch.isfinite(grad_norm):
                    bad = f"gradient became {grad_norm.item()} (loss {values['total']:.4g})"
            if bad is not None:
                _stop_on_nonfinite(run, head, buffers, values, bad, epoch, step, save=world.is_main)
            opt.step()
            sched.step()
            state["global_step"] += 1
            state["step_in_epoch"] = step + 1
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            last_loss = values["total"]
            bar.set_postfix({k: f"{v:.3f}" for k, v in values.items()})
            bar.update(1)
            if world.is_main and state["global_step"] % cfg.checkpoint_every == 0:
                _save_checkpoint(run, head, opt, sched, bank, state)
        bar.close()
        if world.is_main:
            _end_epoch(run, head, opt, sched, bank, val, device, state, epoch, len(batches), start, progress)
        state = world.broadcast(state)  # the other processes wait for rank 0's validation and records
    return TrainResult(run, n_trainable, last_loss, state["best"], time.perf_counter() - start)


def _end_epoch(run: Path, head, opt, sched, bank, val, device, state: dict, epoch: int, n_batches: int,
               start: float, progress: bool) -> None:
    """Rank 0's epoch end: last (and best) head, the epoch's record, a resumable checkpoint."""
    n = max(1, n_batches)
    record = {"epoch": epoch + 1, "step": state["global_step"], "lr": sched.get_last_lr()[0],
              **{f"loss_{k}": v / n for k, v in state["sums"].items()}, "seconds": time.perf_counter() - start}
    save_head(head, run / HEAD_FILES["last"])
    if val is not None:
        v = validate(head, val, device)
        record.update({f"val_{k}": v[k] for k in ("mIoU", "mDice", "FwIoU")}, val_IoU=v["IoU"])
        if state["best"] is None or v["mIoU"] > state["best"]:
            state["best"] = v["mIoU"]
            save_head(head, run / HEAD_FILES["best"])
    state["epoch"], state["step_in_epoch"] = epoch + 1, 0
    state["records"] = [*state["records"], record]
    _write_metrics(run, state["records"])  # rewritten whole: a redone epoch never appears twice
    _save_checkpoint(run, head, opt, sched, bank, state)
    log.info(json.dumps(record))
    if progress:
        tqdm.write("epoch %d: %s" % (epoch + 1, ", ".join(
            f"{k}={v:.4f}" for k, v in record.items() if isinstance(v, float) and k != "seconds")))


def _save_checkpoint(run: Path, head, opt, sched, bank, state: dict) -> None:
    ck = {"head": head.state_dict(), "optim": opt.state_dict(), "sched": sched.state_dict(),
          "bank": bank.state_dict() if bank is not None else None, "state": dict(state)}
    with atomic_output(run / CHECKPOINT) as tmp:
        torch.save(ck, tmp)


def _write_metrics(run: Path, records: list[dict]) -> None:
    write_text_atomic(run / METRICS, "".join(json.dumps(r) + "\n" for r in records))


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
