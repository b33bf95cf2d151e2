"""What the feature store buys: training steps/s from the store vs end to end with live backbones.

Store side: the shipped `construct train` (`train()`, paper preset) for one epoch over a store that
the shipped `extract()` wrote. End-to-end side: the same head, objective, optimizer, batches and
device, but every step decodes the tiles and recomputes both frozen backbones (CONCH trunk + MiT-B1),
as the authors' code does. Each side's step time is the median of its steps' wall times (from one
batch arriving to the next; the store side's are stamped by wrapping the trainer's batch iterator),
which a load spike from other work on the machine cannot skew; whole-run averages are reported too.
The store side is timed for each `--workers` value given (reading in the training process, or in a
loader process); the speedup printed last is the faster one's.

At each `--precision` (default both fp32 and bf16), the backbone forwards and the head step run at it.

    .venv/bin/python benchmarks/two_phase.py            # ends with `speedup: X` (at what auto picks here)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from _common import TrainStep, base_parser, finish, median, report, sync, synthetic_data, training_taps, workdir
from torch.utils.data import DataLoader

import construct.train.trainer as trainer  # its batch iterator is wrapped to time the steps
from construct.backbones.registry import create_backbone
from construct.data.dataset import list_split
from construct.data.loader import TileDataset, collate, images_to_tensor
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.runtime import PRECISIONS, autocast, resolve_device, resolve_precision
from construct.store import FeatureStore
from construct.train.config import TrainConfig, resolve_config
from construct.train.data import epoch_batches


def stamped(loader: Callable[..., object], stamps: list[float]) -> Callable[..., Iterator]:
    """`loader` whose batches are time-stamped as the training loop takes them."""

    def wrapped(*args, **kwargs) -> Iterator:
        for batch in loader(*args, **kwargs):
            stamps.append(time.perf_counter())
            yield batch
        stamps.append(time.perf_counter())

    return wrapped


def store_steps(cfg: TrainConfig) -> dict:
    """One epoch of `construct train`; step times from the stamps between batches."""
    stamps: list[float] = []
    shipped = trainer.batch_loader
    trainer.batch_loader = stamped(shipped, stamps)
    try:
        res = trainer.train(cfg, progress=False)
    finally:
        trainer.batch_loader = shipped
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    if not steps:
        raise SystemExit("no step was timed: the trainer no longer reads batches through `batch_loader`")
    return {"steps": len(steps), "step_seconds": steps, "median_step_s": median(steps[1:]),
            "wall_s_per_step": res.seconds / len(steps), "n_trainable": res.n_trainable}


def end_to_end_steps(data: Path, store: FeatureStore, conch, segformer, cfg: TrainConfig, steps: int,
                     precision: str, device: torch.device) -> dict:
    """`steps` training steps that decode the tiles and recompute both backbones every step."""
    step = TrainStep(store, cfg, device, precision)  # the head `construct train` builds for this store
    tiles = TileDataset(list_split(data, "train", store.classes), store.classes, 224, with_masks=False)
    batches = [b.tolist() for b in epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 0)[:steps]]
    loader = DataLoader(tiles, batch_sampler=batches, num_workers=cfg.workers, collate_fn=collate,
                        prefetch_factor=4 if cfg.workers else None)
    names = training_taps(cfg)
    backbone_s, head_s, stamps = [], [], []
    start = time.perf_counter()
    for batch in loader:
        t0 = time.perf_counter()
        stamps.append(t0)
        images = images_to_tensor(batch["images"], device)
        with torch.no_grad(), autocast(device, precision):
            taps = {**conch.taps(images, with_embedding=False), **segformer.taps(images)}
        sync(device)
        t1 = time.perf_counter()
        step({k: taps[k] for k in names}, batch["labels"])
        backbone_s.append(t1 - t0)
        head_s.append(time.perf_counter() - t1)
    stamps.append(time.perf_counter())
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"steps": steps, "step_seconds": times, "median_step_s": median(times[1:]),
            "wall_s_per_step": (stamps[-1] - start) / steps,
            "median_backbone_s": median(backbone_s[1:]), "median_head_s": median(head_s[1:])}


def measure(data: Path, work: Path, conch, segformer, precision: str, args, device: torch.device) -> dict:
    """Both sides at `precision` (backbone forwards and the head step): extraction, store epochs, end to end."""
    ext = extract(ExtractConfig(data=data, split="train", out=work / f"train-{precision}.zarr", conch=args.conch,
                                segformer=args.segformer, device=args.device, precision=precision),
                  conch, segformer, progress=False)
    store = FeatureStore.open(ext.store)
    from_store = {}
    for workers in args.workers:
        cfg = resolve_config("paper", None, features=str(ext.store), out=str(work / f"run-{time.time_ns()}"),
                             epochs=1, batch_size=args.batch_size, workers=workers, device=args.device,
                             precision=precision)
        print(f"training from the store (construct train, paper preset, 1 epoch, --workers {workers}, {precision})...")
        from_store[workers] = store_steps(cfg)
    print(f"training end to end ({args.e2e_steps} steps, backbones every step, {precision})...")
    cfg = resolve_config("paper", None, batch_size=args.batch_size, workers=1)  # decoding off the main process
    e2e = end_to_end_steps(data, store, conch, segformer, cfg, args.e2e_steps, precision, device)
    best = min(from_store, key=lambda w: from_store[w]["median_step_s"])
    print(f"two-phase training, batch {args.batch_size}, {device}, {precision}, median step:")
    for workers, r in from_store.items():
        report(f"from the store, --workers {workers}: s/step", r["median_step_s"], "s")
        report(f"  speedup (whole-run averages: {e2e['wall_s_per_step'] / r['wall_s_per_step']:.1f}x)",
               f"{e2e['median_step_s'] / r['median_step_s']:.1f}x")
    report("end to end: s/step", e2e["median_step_s"], "s")
    report("  backbones (CONCH + MiT-B1 forward)", e2e["median_backbone_s"], "s")
    report("  head (forward + backward + update)", e2e["median_head_s"], "s")
    report("trainable parameters", f"{from_store[best]['n_trainable']:,}")
    print(f"speedup at {precision}: --workers {best}, the faster setting here")
    return {"from_store": {f"workers_{w}": r for w, r in from_store.items()}, "end_to_end": e2e,
            "best_workers": best, "speedup": e2e["median_step_s"] / from_store[best]["median_step_s"],
            "extract_images_per_s": ext.images_per_s, "random_weights": ext.random_weights}


def main() -> None:
    p = base_parser("two_phase", __doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200, help="tiles in the store (store side: one epoch over them)")
    p.add_argument("--e2e-steps", type=int, default=8, help="end-to-end steps timed")
    p.add_argument("--batch-size", type=int, default=10, help="the paper's batch")
    p.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="precisions measured (backbone forwards and head step, both sides); the final line is "
                        "the one `--precision auto` picks here, or the first measured")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1],
                   help="`construct train --workers` values to time (store reading processes; its default is 0 on CPU, 1 with a GPU)")
    args = p.parse_args()
    device = resolve_device(args.device)
    auto = resolve_precision("auto", device)
    with workdir(args.workdir) as work:
        data = synthetic_data(work / "data", n_train=args.images)
        print(f"building backbones ({args.conch}, {args.segformer})...")
        conch = create_backbone("conch", args.conch, 224).to(device)
        segformer = create_backbone("segformer", args.segformer, 224).to(device)
        by_precision = {pr: measure(data, work, conch, segformer, pr, args, device) for pr in args.precision}
    for pr, fig in by_precision.items():
        report(f"speedup at {pr}", f"{fig['speedup']:.1f}x")
    final = auto if auto in by_precision else args.precision[0]
    figures = {"precisions": by_precision, "final_precision": final, "auto": auto, "batch_size": args.batch_size}
    print(f"speedup below: {final} (--precision auto picks {auto} here)")
    finish("speedup", by_precision[final]["speedup"], figures, args, digits=1)


if __name__ == "__main__":
    main()
