"""fp32 against bf16 autocast, the same work at both precisions in one run: extraction (img/s), the head's
training step (s), the teacher's refine (tiles/s, 6-way TTA + Dense CRF) and a student's inference
(tiles/s, U-Net ResNet-18 by default).

Extraction: the shipped `extract()` over the same synthetic tiles (full-size random CONCH + MiT-B1, the
default), after one untimed forward at that precision. Head step: `construct train`'s step (paper
preset, batch 10) on batches of the fp32 store, median of the timed steps. Teacher: the shipped
`refine()` (its own `tiles_per_s`, model building not counted) of a head trained briefly on that store,
after a warm-up refine of a few tiles. Student: `StudentPredictor.scores` on batches of 224-px tiles,
as `refine`/`slide` call it. What `--precision auto` picks on this machine is printed first: where the CPU
has no native bf16 (AMX, AVX512-BF16), bf16 is emulated and slower, and auto stays at fp32.

    .venv/bin/python benchmarks/precision.py     # ends with `refine_speedup: X` (fp32 time / bf16 time)
"""

from __future__ import annotations

import torch
from _common import TrainStep, base_parser, finish, median, report, synthetic_data, time_calls, training_taps, workdir
from store_io import FEATURE_AXIS, cosine

from construct.backbones.registry import create_backbone
from construct.data.classes import BCSS
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.inference.student import StudentPredictor
from construct.refine.config import RefineConfig
from construct.refine.pipeline import refine
from construct.runtime import PRECISIONS, autocast, native_bf16, resolve_device, resolve_precision
from construct.store import FeatureStore
from construct.student.model import build_student
from construct.train.config import resolve_config
from construct.train.trainer import train

TILE = 224


def extraction(data, work, conch, segformer, precision: str, args, device) -> float:
    """img/s of `extract()` at `precision`, after one untimed forward at it."""
    with torch.no_grad(), autocast(device, precision):
        probe = torch.rand(2, 3, TILE, TILE, device=device)
        conch.taps(probe), segformer.taps(probe)
    res = extract(ExtractConfig(data=data, split="train", out=work / f"{precision}.zarr", conch=args.conch,
                                segformer=args.segformer, device=str(device), precision=precision,
                                batch_size=args.batch_size, workers=0, limit=args.images),
                  conch, segformer, progress=False)
    return res.images_per_s


def feature_cosines(fp32: FeatureStore, bf16: FeatureStore) -> dict[str, dict[str, float]]:
    """Per stored tap, cosine (along the feature axis) of the bf16 extraction's values to the fp32 one's."""
    rows = list(range(fp32.n_rows))
    out = {}
    for name in fp32.layout.feature_arrays():
        cos = cosine(bf16.read(name, rows), fp32.read(name, rows), FEATURE_AXIS[name.split("_")[0]])
        out[name] = {"mean": float(cos.mean()), "min": float(cos.min())}
    return out


def head_steps(store: FeatureStore, precision: str, args, device) -> float:
    """Median seconds of `construct train`'s step (paper preset) at `precision`."""
    cfg = resolve_config("paper", None, batch_size=args.head_batch)
    step = TrainStep(store, cfg, device, precision)
    names = training_taps(cfg)
    rows = list(range(args.head_batch))
    batch = store.read_batch(rows, names)
    taps = {k: torch.from_numpy(batch[k]) for k in names}
    labels = torch.from_numpy(batch["labels"])
    return median(time_calls(lambda: step(taps, labels), args.head_steps, device))


def teacher(run, data, warm_data, conch, precision: str, args, work) -> float:
    """tiles/s of the shipped refine (6-way TTA + CRF) of the run at `precision`, after a warm-up refine."""
    base = dict(run=run, split="train", device=args.device, precision=precision, batch_size=args.batch_size,
                workers=args.crf_workers, loader_workers=0)
    refine(RefineConfig(data=warm_data, out=work / f"warm-{precision}", **base), conch=conch, progress=False)
    return refine(RefineConfig(data=data, out=work / f"refine-{precision}", **base), conch=conch,
                  progress=False).tiles_per_s


def student(precision: str, args, device) -> float:
    torch.manual_seed(0)
    net = build_student(args.student_arch, args.student_encoder, len(BCSS) + 1)
    predictor = StudentPredictor(net, BCSS, TILE, device=device, precision=precision)
    x = torch.rand(args.batch_size, 3, TILE, TILE, device=device)
    seconds = median(time_calls(lambda: predictor.scores(x, "none"), args.student_repeats, device))
    return args.batch_size / seconds


def main() -> None:
    p = base_parser("precision", __doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20, help="tiles extracted at each precision (the head's store)")
    p.add_argument("--batch-size", type=int, default=10, help="extraction, refine and student batch")
    p.add_argument("--head-batch", type=int, default=10, help="the paper's training batch")
    p.add_argument("--head-steps", type=int, default=5, help="head steps timed at each precision")
    p.add_argument("--refine-tiles", type=int, default=10, help="tiles refined (timed) at each precision")
    p.add_argument("--crf-workers", type=int, default=0, help="refine's CRF processes (0: in line)")
    p.add_argument("--student-arch", default="unet")
    p.add_argument("--student-encoder", default="resnet18")
    p.add_argument("--student-repeats", type=int, default=3, help="student batches timed at each precision")
    args = p.parse_args()
    device = resolve_device(args.device)
    auto = resolve_precision("auto", device)
    print(f"device {device}: native bf16 {native_bf16(device) or 'none'}; --precision auto -> {auto}")
    figures: dict = {"auto": auto, "native_bf16": native_bf16(device)}
    with workdir(args.workdir) as work:
        data = synthetic_data(work / "data", n_train=max(args.images, args.refine_tiles))
        conch = create_backbone("conch", args.conch, TILE).to(device)
        segformer = create_backbone("segformer", args.segformer, TILE).to(device)
        for precision in PRECISIONS:
            print(f"extracting {args.images} tiles at {precision}...")
            figures[f"extract_img_per_s_{precision}"] = extraction(data, work, conch, segformer, precision, args,
                                                                   device)
        store = FeatureStore.open(work / "fp32.zarr")
        figures["feature_cosine"] = feature_cosines(store, FeatureStore.open(work / "bf16.zarr"))
        for precision in PRECISIONS:
            print(f"head steps at {precision}...")
            figures[f"head_step_s_{precision}"] = head_steps(store, precision, args, device)
        run = work / "run"
        train(resolve_config("paper", None, features=str(store.path), out=str(run), steps=2, workers=0,
                          batch_size=args.head_batch, device=args.device), progress=False)
        teacher_data = synthetic_data(work / "refine-data", n_train=args.refine_tiles)
        warm_data = synthetic_data(work / "warm-data", n_train=2)
        for precision in PRECISIONS:
            print(f"refining {args.refine_tiles} tiles at {precision} (6-way TTA + CRF)...")
            figures[f"refine_tiles_per_s_{precision}"] = teacher(run, teacher_data, warm_data, conch, precision, args,
                                                                 work)
        for precision in PRECISIONS:
            print(f"student ({args.student_arch}/{args.student_encoder}) at {precision}...")
            figures[f"student_tiles_per_s_{precision}"] = student(precision, args, device)
    print(f"fp32 vs bf16 autocast, {device}, batch {args.batch_size}:")
    rows = [("extraction (CONCH + MiT-B1)", "extract_img_per_s", "img/s", False),
            ("head training step (paper preset)", "head_step_s", "s", True),
            ("teacher refine (6-way TTA + CRF)", "refine_tiles_per_s", "tiles/s", False),
            (f"student {args.student_arch}/{args.student_encoder} inference", "student_tiles_per_s", "tiles/s", False)]
    for label, key, unit, is_time in rows:
        fp32, bf16 = figures[f"{key}_fp32"], figures[f"{key}_bf16"]
        gain = fp32 / bf16 if is_time else bf16 / fp32
        figures[f"{key}_gain"] = gain
        report(f"{label}: fp32 / bf16", f"{fp32:.4g} / {bf16:.4g}", f"{unit}  (bf16 gain {gain:.2f}x)")
    for name, cos in figures["feature_cosine"].items():
        report(f"stored {name}: cosine bf16 to fp32, mean (min)", f"{cos['mean']:.6f} ({cos['min']:.6f})")
    finish("refine_speedup", figures["refine_tiles_per_s_gain"], figures, args, digits=2)


if __name__ == "__main__":
    main()
