"""Shared helpers of the benchmark scripts: machine description, timing, fixtures, JSON + final line.

Every script prints its figures, writes them with the machine they came from to a JSON file, and ends
with one `name: value` line. Figures are ratios measured within one run: this machine is shared and
noisy, so absolute times are reported for context only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from construct.data.classes import BCSS
from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.head.model import ConStructHead, HeadConfig, tokens_to_map
from construct.head.pooler import ContrastiveHead
from construct.store import FeatureStore, StoreLayout, StoreSpec, dataset_fingerprint
from construct.train.augment import apply_symmetries, draw_symmetries
from construct.train.config import TrainConfig
from construct.train.losses import MemoryBank
from construct.train.objective import CONTRAST_TOKENS, compute_losses, teacher_tap

RESULTS = Path(__file__).resolve().parent / "results"


def base_parser(name: str, description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--json", type=Path, default=RESULTS / f"{name}.json", help="where to write the figures")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the synthetic data, stores and runs here (default: a temporary folder, removed)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--conch", default="random", help="CONCH spec (`random`: full-size, random weights)")
    p.add_argument("--segformer", default="random", help="SegFormer spec (`random`: full-size MiT-B1)")
    return p


@contextmanager
def workdir(path: Path | None) -> Iterator[Path]:
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    tmp = Path(tempfile.mkdtemp(prefix="construct-bench-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def synthetic_data(root: Path, n_train: int = 0, n_valid: int = 0) -> Path:
    """A synthetic dataset in the BCSS-WSSS layout (reused when `root` already holds the same one)."""
    return make_synthetic_dataset(root, SynthConfig(n_train=n_train, n_valid=n_valid, n_test=0), progress=False)


def training_taps(cfg: TrainConfig) -> list[str]:
    """The store arrays `construct train` reads with these settings (as the trainer lists them)."""
    hc = HeadConfig(n_classes=len(BCSS), cam_levels=cfg.cam_levels, bce_weights=cfg.bce_weights,
                    fuse_weights=cfg.fuse_weights, distill_levels=cfg.distill_levels)
    names = {f"conch_b{b}" for b in hc.blocks()} | ({CONTRAST_TOKENS} if cfg.contrast else set())
    return sorted(names | ({teacher_tap(k) for k in hc.distill_levels} if cfg.distill else set()))


class TrainStep:
    """One step of `construct train` outside the trainer's loop, for timing it beside other work: the
    head the trainer builds for `store` (shapes, text prototypes, the stored contrastive head), the
    shipped objective and optimizer, the trainer's augmentation."""

    def __init__(self, store: FeatureStore, cfg: TrainConfig, device: torch.device, precision: str = "fp32"):
        n_tokens, width = store.shape(CONTRAST_TOKENS)
        self.config = HeadConfig(
            n_classes=len(store.classes), width=width, embed_dim=store.text_embeddings.shape[1],
            cam_levels=cfg.cam_levels, bce_weights=cfg.bce_weights, fuse_weights=cfg.fuse_weights,
            distill_levels=cfg.distill_levels, n_ratio=cfg.n_ratio, grid=math.isqrt(n_tokens))
        self.cfg = cfg
        self.head = ConStructHead(self.config, torch.from_numpy(store.text_embeddings)).to(device).train()
        self.chead = ContrastiveHead.from_state_dict(
            {k: torch.from_numpy(v) for k, v in store.contrastive_head_state().items()}).to(device)
        self.chead.requires_grad_(False).eval()
        self.bank = MemoryBank(cfg.bank_size, self.config.embed_dim) if cfg.contrast else None
        self.opt = torch.optim.AdamW(self.head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.device = device
        self.precision = precision  # the head forward's, as `construct train --precision` resolves it
        self.n_steps = 0

    def __call__(self, taps: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
        """taps: store arrays as read (tokens (B, N, D) or maps (B, C, h, w)); returns the total loss."""
        maps = {k: tokens_to_map(v.to(self.device).float(), self.config.grid) for k, v in taps.items()}
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.n_steps)
        maps = apply_symmetries(maps, draw_symmetries(len(labels), g))
        losses = compute_losses(self.head, self.chead, maps, labels.to(self.device), self.cfg, self.bank,
                                precision=self.precision)
        self.opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        self.opt.step()
        self.n_steps += 1
        return float(losses["total"].detach())  # waits for the device, as the trainer's logging does


def synthetic_store(path: Path, n_rows: int, conch, segformer, taps: list[str], store_dtype: str = "float16",
                    seed: int = 0) -> FeatureStore:
    """A complete store of `n_rows` rows written through the FeatureStore API, without extraction.

    Shapes, backbone recipes, text embeddings and the contrastive head are the given backbones', so
    `construct train` accepts it; the rows are random normal values, cycled from two random shards
    (what is measured on it, reading speed and memory, does not depend on the values)."""
    with torch.no_grad():
        probe = torch.zeros(1, 3, 224, 224)
        shapes = {k: tuple(v.shape[1:]) for k, v in {**conch.taps(probe), **segformer.taps(probe)}.items()}
    layout = StoreLayout(conch_taps=tuple(t for t in taps if t.startswith("conch_")),
                         seg_taps=tuple(t for t in taps if t.startswith("seg_")), keep_cls=False,
                         store_dtype=store_dtype)
    rng = np.random.default_rng(seed)
    rel = [f"train/synthetic_{i:06d}.png" for i in range(n_rows)]
    labels = rng.integers(0, 2, (n_rows, len(BCSS)), dtype=np.uint8)
    labels[np.arange(n_rows), rng.integers(0, len(BCSS), n_rows)] = 1  # every tile holds some tissue
    spec = StoreSpec(
        split="train", image_ids=[Path(r).stem for r in rel], rel_paths=rel, data_root=str(path.parent),
        classes=BCSS, backbones={"conch": conch.recipe, "segformer": segformer.recipe}, layout=layout,
        shapes={k: shapes[k] for k in layout.feature_arrays()},
        text_embeddings=conch.text_embeddings(BCSS.descriptions).numpy(),
        contrastive_head={k: v.numpy() for k, v in conch.contrastive_head.export_state().items()},
        dataset_fingerprint=dataset_fingerprint(rel),
        preprocessing={"image_size": 224, "tile_size": 224, "precision": "fp32", "input": "synthetic rows"},
        labels=labels,
    )
    store = FeatureStore.create(path, spec)
    s = layout.shard_rows
    pool = [{k: rng.standard_normal((s, *shapes[k]), dtype=np.float32) for k in layout.feature_arrays()}
            for _ in range(2)]
    for i, (a, b) in enumerate(store.shards()):
        store.write_shard(a, b, {k: v[: b - a] for k, v in pool[i % 2].items()})
    return FeatureStore.open(path)


def drop_page_cache(path: Path) -> None:
    """Evict a folder's files from the OS page cache (no root needed), so the next reads hit the disk."""
    os.sync()  # dirty pages cannot be evicted before they are written back
    for f in Path(path).rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def machine() -> dict:
    """What the figures were measured on."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "cpu": cpu, "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "platform": platform.platform(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    if hasattr(os, "getloadavg"):
        info["loadavg_1min"] = round(os.getloadavg()[0], 2)  # other work on the machine skews absolute times
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Wall seconds of `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def finish(name: str, value: float, figures: dict, args: argparse.Namespace, digits: int = 3) -> None:
    """Write the figures (with the machine and the command) to --json and print the final line."""
    record = {
        "benchmark": Path(sys.argv[0]).stem, name: round(value, digits) if isinstance(value, float) else value,
        "figures": figures, "machine": machine(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "when": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"figures written to {args.json}")
    print(f"{name}: {value:.{digits}f}" if isinstance(value, float) else f"{name}: {value}")


def report(label: str, value: float | str, unit: str = "") -> None:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    print(f"  {label:<44} {text} {unit}".rstrip())
