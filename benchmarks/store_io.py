"""The feature store: bytes per image per dtype, random-batch reads vs training's needs, int8 fidelity.

1. Size and fidelity on real extractions: the shipped `extract()` writes the same tiles into a float16
   and an int8 store; each is read back with `FeatureStore.read` and compared, token by token (cosine
   along the feature axis), with the float32 taps of the same backbones run directly.
2. Reading: random batches of the arrays `construct train` reads (paper preset), from a larger store
   written through the FeatureStore API with random rows (extracting that many tiles would take too
   long here; read speed does not depend on the values), with a warm and a cold OS page cache.
3. Consumption: training steps of the shipped objective on batches from that store, in images/s.
   Reading must outpace it: `read_margin` = cold-cache read rate / consumption rate (want > 1).

    .venv/bin/python benchmarks/store_io.py             # ends with `int8_cosine: X`
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from _common import (
    TrainStep,
    base_parser,
    drop_page_cache,
    finish,
    median,
    report,
    synthetic_data,
    synthetic_store,
    training_taps,
    workdir,
)

from construct.backbones.registry import create_backbone
from construct.data.dataset import read_image
from construct.data.loader import images_to_tensor
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.runtime import resolve_device
from construct.store import STORE_DTYPES, FeatureStore
from construct.store.feature_store import SCALE_SUFFIX
from construct.train.config import TrainConfig, resolve_config
from construct.train.data import epoch_batches

FEATURE_AXIS = {"conch": -1, "seg": 1}  # the axis a token's (or a position's) features run along


def bytes_per_image(store: FeatureStore) -> dict[str, float]:
    """On-disk bytes per row of each per-row array (fixed parts such as the stored contrastive head
    are left out): the top-level Zarr arrays whose first axis is the rows."""
    per_array = {}
    for folder in sorted(store.path.iterdir()):
        meta = json.loads((folder / "zarr.json").read_text()) if (folder / "zarr.json").is_file() else {}
        if meta.get("node_type") == "array" and meta["shape"][:1] == [store.n_rows]:
            per_array[folder.name] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / store.n_rows
    return per_array


def reference_taps(store: FeatureStore, conch, segformer, device: torch.device,
                   batch: int = 16) -> dict[str, np.ndarray]:
    """float32 taps of the store's tiles, straight from the backbones."""
    names = store.layout.feature_arrays()
    out: dict[str, list[np.ndarray]] = {k: [] for k in names}
    paths = store.image_paths
    for a in range(0, len(paths), batch):
        images = torch.from_numpy(np.stack([read_image(p) for p in paths[a:a + batch]]))
        with torch.no_grad():
            x = images_to_tensor(images, device)
            taps = {**conch.taps(x, with_embedding=False), **segformer.taps(x)}
        for k in names:
            out[k].append(taps[k].float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def cosine(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis) + 1e-30)


def read_rate(store: FeatureStore, names: list[str], batch: int, seconds: float, cold: bool) -> float:
    """Images/s of random batches (one epoch's order, as training draws them), for about `seconds`."""
    if cold:
        drop_page_cache(store.path)
    batches = epoch_batches(store.n_rows, batch, seed=1, epoch=0)
    n, start = 0, time.perf_counter()
    for rows in batches:
        store.read_batch(rows, names)
        n += len(rows)
        if time.perf_counter() - start > seconds:
            break
    return n / (time.perf_counter() - start)


def consumption_rate(store: FeatureStore, cfg: TrainConfig, names: list[str], steps: int,
                     device: torch.device) -> float:
    """Images/s that training steps (the shipped objective) consume, reading excluded."""
    step = TrainStep(store, cfg, device)
    times = []
    for rows in epoch_batches(store.n_rows, cfg.batch_size, cfg.seed, 0)[: steps + 1]:
        batch = {k: torch.from_numpy(v) for k, v in store.read_batch(rows, names).items()}
        t = time.perf_counter()
        step({k: batch[k] for k in names}, batch["labels"])
        times.append(time.perf_counter() - t)
    return cfg.batch_size / median(times[1:])  # the first step warms up


def main() -> None:
    p = base_parser("store_io", __doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=32, help="tiles extracted for size and fidelity")
    p.add_argument("--read-rows", type=int, default=1024, help="rows of the store read at random")
    p.add_argument("--read-seconds", type=float, default=6.0, help="per read measurement")
    p.add_argument("--steps", type=int, default=6, help="training steps timed for the consumption rate")
    p.add_argument("--batch-size", type=int, default=10)
    args = p.parse_args()
    device = resolve_device(args.device)
    cfg = resolve_config("paper", None, batch_size=args.batch_size)
    names = training_taps(cfg)
    figures: dict = {"read_arrays": names, "dtypes": {}}
    with workdir(args.workdir) as work:
        data = synthetic_data(work / "data", n_train=args.images)
        conch = create_backbone("conch", args.conch, 224).to(device)
        segformer = create_backbone("segformer", args.segformer, 224).to(device)
        stores = {}
        for dtype in STORE_DTYPES:
            print(f"extracting {args.images} tiles into a {dtype} store...")
            res = extract(ExtractConfig(data=data, split="train", out=work / f"extracted-{dtype}.zarr",
                                        conch=args.conch, segformer=args.segformer, device=args.device,
                                        store_dtype=dtype), conch, segformer, progress=False)
            stores[dtype] = FeatureStore.open(res.store)
        print("float32 reference taps...")
        ref = reference_taps(stores["float16"], conch, segformer, device)
        for dtype, store in stores.items():
            per_array = bytes_per_image(store)
            rows = np.arange(store.n_rows)
            fid = {}
            for k, v in ref.items():
                cos = cosine(store.read(k, rows), v, FEATURE_AXIS[k.split("_")[0]])
                fid[k] = {"mean": float(cos.mean()), "min": float(cos.min())}
            figures["dtypes"][dtype] = {"bytes_per_image": sum(per_array.values()),
                                        "bytes_per_image_by_array": per_array, "cosine_to_fp32": fid}
        for dtype in STORE_DTYPES:
            print(f"writing a {args.read_rows}-row {dtype} store of random rows...")
            store = synthetic_store(work / f"read-{dtype}.zarr", args.read_rows, conch, segformer, names, dtype)
            d = figures["dtypes"][dtype]
            sizes = bytes_per_image(store)
            d["read_bytes_per_image"] = sum(sizes.get(k, 0) + sizes.get(k + SCALE_SUFFIX, 0) for k in names)
            d["read_images_per_s_warm"] = read_rate(store, names, args.batch_size, args.read_seconds, cold=False)
            d["read_images_per_s_cold"] = read_rate(store, names, args.batch_size, args.read_seconds, cold=True)
        print(f"timing {args.steps} training steps on batches read from the float16 store...")
        consume = consumption_rate(FeatureStore.open(work / "read-float16.zarr"), cfg, names, args.steps, device)
    worst_read = min(d["read_images_per_s_cold"] for d in figures["dtypes"].values())
    int8 = min(f["mean"] for f in figures["dtypes"]["int8"]["cosine_to_fp32"].values())
    figures.update(train_consumes_images_per_s=consume, read_margin=worst_read / consume)
    print(f"feature store, {device}, random batches of {args.batch_size} of {', '.join(names)}:")
    for dtype, d in figures["dtypes"].items():
        report(f"{dtype}: bytes per image (all per-row arrays)", f"{d['bytes_per_image'] / 1e6:.3f} MB")
        report(f"{dtype}: bytes per image read by training", f"{d['read_bytes_per_image'] / 1e6:.3f} MB")
        report(f"{dtype}: read images/s, warm / cold cache",
               f"{d['read_images_per_s_warm']:.0f} / {d['read_images_per_s_cold']:.0f}")
        worst = min(d["cosine_to_fp32"].items(), key=lambda kv: kv[1]["mean"])
        report(f"{dtype}: cosine to fp32, worst array mean (min)",
               f"{worst[1]['mean']:.6f} ({worst[1]['min']:.4f}, {worst[0]})")
    report("training consumes images/s", consume)
    report("read margin (cold read / consumption)", figures["read_margin"])
    finish("int8_cosine", int8, figures, args, digits=6)


if __name__ == "__main__":
    main()
