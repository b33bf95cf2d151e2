"""Stain shifts on the real-pixel test split: how much a head run and its student lose, with and without
stain normalisation (issue 23).

The test tiles of `benchmarks/real_pixels.py build` are recoloured as other labs' stains would look:
SHIFTS random H&E shifts (colour deconvolution with Ruifrok & Johnston's matrix, hematoxylin and eosin
concentrations each scaled by U(0.7, 1.35) with at least one of them 25% off, and offset by U(-0.03, 0.03);
the strength of the issue's examples) and one Reinhard-style colour transfer (the tissue's CIELAB mean and
std moved). Each model refines every version with `--stain-norm none`, `macenko` and `reinhard` (gate gt;
the input's stain is estimated once per split), and `construct eval` scores it.

drop = mIoU on the original tiles without normalisation - mIoU on a shifted version (with the method);
`unshifted change` = mIoU on the original tiles with the method - without. Ends with `worst_drop: X`, the
worst drop of either model with the default method (construct.stain.methods.DEFAULT_METHOD).

Cheap enough for a laptop: random-tiny backbones, the demo preset, a 3-epoch U-Net ResNet-18 student.

    python benchmarks/stain.py --data /work/data/real --workdir work/stain
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _common import base_parser, finish, report, workdir
from PIL import Image

from construct.data.classes import BCSS
from construct.data.dataset import list_split, split_dir
from construct.evaluate.run import evaluate_predictions
from construct.refine import RefineConfig, refine
from construct.stain.augment import hed_recolour
from construct.stain.colour import as_rows, from_rows, lab_to_rgb, rgb_to_lab
from construct.stain.estimate import estimate_images, tissue_mask
from construct.stain.methods import DEFAULT_AUGMENT, DEFAULT_LAB_AUGMENT, DEFAULT_METHOD, METHODS
from construct.stain.normalize import StainNormalizer
from construct.stain.reference import DegenerateStain, StainReference
from construct.stain.runs import reference_of_run

SHIFTS = 4
SCALE_RANGE = (0.7, 1.35)
MIN_OFF = 0.25  # at least one stain scaled this far from 1
OFFSET = 0.03
# The colour transfer: tissue CIELAB mean moved (L, a, b) and std scaled, as a paler, bluer lab's.
TRANSFER_MEAN = (8.0, -10.0, -6.0)
TRANSFER_STD = (0.85, 0.8, 1.2)


def shifts(seed: int) -> dict[str, dict]:
    rng = np.random.default_rng(seed)
    out: dict[str, dict] = {}
    while len(out) < SHIFTS:
        h, e = rng.uniform(*SCALE_RANGE, 2)
        if max(abs(h - 1), abs(e - 1)) < MIN_OFF:
            continue
        oh, oe = rng.uniform(-OFFSET, OFFSET, 2)
        out[f"hed{len(out) + 1}"] = {"h": round(float(h), 3), "e": round(float(e), 3), "h_offset": round(float(oh), 3),
                                     "e_offset": round(float(oe), 3)}
    out["reinhard"] = {"lab_mean_shift": TRANSFER_MEAN, "lab_std_scale": TRANSFER_STD}
    return out


def recolour(images01: torch.Tensor, shift: dict) -> torch.Tensor:
    if "h" in shift:
        b = len(images01)
        scale = torch.tensor([shift["h"], shift["e"], 1.0]).repeat(b, 1)
        offset = torch.tensor([shift["h_offset"], shift["e_offset"], 0.0]).repeat(b, 1)
        return hed_recolour(images01, scale, offset)
    rows = as_rows(images01)
    tissue = tissue_mask(rows)
    lab = rgb_to_lab(rows)
    mean = lab[tissue].mean(0)
    moved = lab_to_rgb((lab - mean) * torch.tensor(shift["lab_std_scale"]) + mean + torch.tensor(shift["lab_mean_shift"]))
    moved = torch.where(tissue[:, None], moved, rows)
    return from_rows(moved, images01)


def read01(path: Path) -> torch.Tensor:
    """An image file as (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy()).permute(2, 0, 1).float() / 255


def write01(image01: torch.Tensor, path: Path) -> None:
    Image.fromarray((image01.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


def make_shifted(data: Path, out: Path, shift: dict) -> Path:
    """A dataset root whose test split is `data`'s, recoloured (one transform for the whole split)."""
    if (out / "test" / "done").is_file():
        return out
    img = out / "test" / "img"
    img.mkdir(parents=True, exist_ok=True)
    samples = list_split(data, "test", BCSS)
    images = torch.stack([read01(s.image_path) for s in samples])
    # The colour transfer moves the split's statistics as a whole: computed over all its tiles at once.
    shifted = recolour(images, shift)
    for s, im in zip(samples, shifted):
        write01(im, img / s.image_path.name)
    mask = out / "test" / "mask"
    if not mask.exists():
        mask.symlink_to((data / "test" / "mask").resolve())
    (out / "test" / "done").write_text("")
    return out


def per_tile_copy(src: Path, out: Path, split: str, reference: StainReference) -> None:
    """`src`'s split with each tile normalised on its own (Reinhard, its own tissue statistics → `reference`):
    the per-tile normalisation a stage-1 store would be extracted from. Tiles too bare to estimate stay."""
    done = out / f"{split}.done"
    if done.is_file():
        return
    samples = list_split(src, split, BCSS)
    img = split_dir(src, split)
    dest = out / img.relative_to(src)
    dest.mkdir(parents=True, exist_ok=True)
    for s in samples:
        tile = read01(s.image_path)[None]
        try:
            tile = StainNormalizer("reinhard", estimate_images([tile], s.image_id), reference)(tile)
        except DegenerateStain:
            pass
        write01(tile[0], dest / s.image_path.name)
    if split != "train" and not (dest.parent / "mask").exists():
        (dest.parent / "mask").symlink_to((img.parent / "mask").resolve())
    done.write_text("")


def stage1_run(data: Path, work: Path, head: Path, conch: str, segformer: str, device: str) -> Path:
    """A head run whose store was extracted from per-tile normalised train and valid tiles."""
    reference = reference_of_run(head)
    root = work / "stage1" / "data"
    for split in ("train", "valid"):
        per_tile_copy(data, root, split, reference)
    return head_run(root, work / "stage1", work / "stage1" / "head", conch, segformer, device)


def head_run(data: Path, stores: Path, run: Path, conch: str, segformer: str, device: str) -> Path:
    """`data`'s train and valid splits extracted into `stores` and a demo-preset head trained on them (each
    step skipped when already done)."""
    for split in ("train", "valid"):
        construct("extract", "--data", str(data), "--split", split, "--out", str(stores / f"{split}.zarr"),
                  "--conch", conch, "--segformer", segformer, "--device", device, "--quiet")
    if not (run / "head_best.safetensors").exists() and not (run / "head_last.safetensors").exists():
        construct("train", "--features", str(stores / "train.zarr"), "--val-features", str(stores / "valid.zarr"),
                  "--out", str(run), "--preset", "demo", "--device", device, "--quiet")
    return run


def construct(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "construct", *args], check=True)


def student_name(seed: int, stain_augment: float, lab_augment: float) -> str:
    name = "student" if seed == 0 else f"student-s{seed}"
    if stain_augment != DEFAULT_AUGMENT:
        name += f"-aug{stain_augment:g}"
    return name + f"-lab{lab_augment:g}" if lab_augment else name


def make_runs(data: Path, work: Path, conch: str, segformer: str, device: str, epochs: int,
              models: list[str], student_seeds: list[int], stain_augment: float,
              lab_augment: float) -> dict[str, Path]:
    head = head_run(data, work / "features", work / "runs" / "head", conch, segformer, device)
    runs = {"head": head} if "head" in models else {}
    for seed in student_seeds if "student" in models else []:
        student = work / "runs" / student_name(seed, stain_augment, lab_augment)
        history = student / "metrics.jsonl"
        if not history.is_file() or len(history.read_text().splitlines()) < epochs:
            resume = ["--resume"] if (student / "config.json").is_file() else []
            construct("distill", "--run", str(head), "--data", str(data), "--out", str(student), "--epochs",
                      str(epochs), "--seed", str(seed), "--stain-augment", str(stain_augment), "--lab-augment",
                      str(lab_augment), "--device", device, "--quiet", *resume)
        runs[student_name(seed, stain_augment, lab_augment)] = student
    return runs


def score(run: Path, data: Path, out: Path, method: str, device: str) -> float:
    metrics = out / "metrics.json"
    if not metrics.is_file():
        refine(RefineConfig(run=run, data=data, split="test", out=out, gate="gt", stain_norm=method, device=device,
                            workers=1), progress=False)
        evaluate_predictions(out, data, "test", classes=BCSS, json_path=metrics, progress=False)
    return float(json.loads(metrics.read_text())["mIoU"])


def drop_row(miou: dict[str, float], base: float) -> dict:
    """A model's mIoU by test version, its mean and worst drop from `base` over the shifted versions, and
    the change on the original tiles."""
    drops = [base - v for k, v in miou.items() if k != "original"]
    return {"mIoU": miou, "mean_drop": round(float(np.mean(drops)), 2), "worst_drop": round(float(max(drops)), 2),
            "unshifted_change": round(miou["original"] - base, 2)}


def stage1_figures(args, work: Path, versions: dict[str, Path], head_rows: dict | None) -> dict:
    """Stage 1 normalised per tile before extraction (and every test tile normalised alike at inference),
    against the head whose store holds the tiles as they are (normalised per split at inference)."""
    run = stage1_run(args.data, work, work / "runs" / "head", args.conch, args.segformer, args.device)
    reference = reference_of_run(run)
    miou = {}
    for v, root in versions.items():
        normalised = work / "stage1" / "test" / v
        per_tile_copy(root, normalised, "test", reference)
        miou[v] = score(run, normalised, work / "pred" / "stage1" / v, "none", args.device)
    base = head_rows["none"]["mIoU"]["original"] if head_rows else miou["original"]
    row = drop_row(miou, base)
    report("head, per-tile normalised store: mean / worst drop", f"{row['mean_drop']:.2f} / {row['worst_drop']:.2f}",
           f"(unshifted {row['unshifted_change']:+.2f} against the head's un-normalised original {base:.2f})")
    return row


def main() -> None:
    p = base_parser("stain", __doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/data/real"), help="real-pixel dataset root")
    p.add_argument("--epochs", type=int, default=3, help="student epochs")
    p.add_argument("--seed", type=int, default=0, help="of the random shifts")
    p.add_argument("--models", default="head,student", help="which runs to score (head: no student trained)")
    p.add_argument("--student-seeds", default="0", help="one student per seed (`0,1`: two), each scored")
    p.add_argument("--stain-augment", type=float, default=DEFAULT_AUGMENT, help="the students' (distill's flag)")
    p.add_argument("--lab-augment", type=float, default=DEFAULT_LAB_AUGMENT, help="the students' (distill's flag)")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="normalisations to score (none is always scored: the drops are measured from it)")
    p.add_argument("--stage1", action="store_true",
                   help="also train a head on per-tile normalised tiles (normalised before extraction) and score it")
    p.set_defaults(conch="random-tiny", segformer="random-tiny")
    args = p.parse_args()
    with workdir(args.workdir) as work:
        runs = make_runs(args.data, work, args.conch, args.segformer, args.device, args.epochs,
                         args.models.split(","), [int(x) for x in args.student_seeds.split(",")], args.stain_augment,
                         args.lab_augment)
        methods = ["none", *(m for m in args.methods.split(",") if m != "none")]
        versions = {"original": args.data}
        table = shifts(args.seed)
        for name, shift in table.items():
            versions[name] = make_shifted(args.data, work / "shifted" / name, shift)
        figures: dict = {"shifts": table, "models": {}}
        worst = []
        for model, run in runs.items():
            miou = {m: {v: score(run, root, work / "pred" / model / m / v, m, args.device)
                        for v, root in versions.items()} for m in methods}
            base = miou["none"]["original"]
            rows = {}
            for m in methods:
                rows[m] = drop_row(miou[m], base)
                report(f"{model} {m}: mean / worst drop", f"{rows[m]['mean_drop']:.2f} / {rows[m]['worst_drop']:.2f}",
                       f"(unshifted {rows[m]['unshifted_change']:+.2f}; original {base:.2f})")
            figures["models"][model] = rows
            if DEFAULT_METHOD in rows:
                worst.append(rows[DEFAULT_METHOD]["worst_drop"])
        if args.stage1:
            figures["stage1"] = stage1_figures(args, work, versions, figures["models"].get("head"))
        figures["default_method"] = DEFAULT_METHOD
        finish("worst_drop", max(worst) if worst else float("nan"), figures, args, digits=2)


if __name__ == "__main__":
    main()
