"""What bf16 costs in accuracy: the whole pipeline at fp32 and at bf16 on the same data, test mIoU of the
head (refine: 6-way TTA + CRF) and of a distilled student, and the stored features' cosine per tap.

Each precision runs every phase at it (`--precision` of extract, train, refine, distill): extract the
train/valid/test splits, train a head (demo preset), refine and score the test split, distill a student
(the demo's: SegFormer/MobileNet-V3-small on 96-px crops), refine and score it. `--inference-only`
trains at fp32 alone and compares the inference of that head and student (where bf16 is emulated,
training at it takes hours). Default data: the demo's
synthetic set; `--data` takes any dataset in the BCSS-WSSS layout (e.g. the real-pixel set of
real_pixels.py). Default backbones: random-tiny (full size is slow where bf16 is emulated).

    .venv/bin/python benchmarks/precision_accuracy.py    # ends with `max_miou_drop: X` (points, fp32 - bf16)
"""

from __future__ import annotations

import time
from pathlib import Path

from _common import base_parser, finish, report, workdir
from precision import feature_cosines

from construct.data.classes import BCSS
from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.demo import DEMO_STUDENT, DEMO_STUDENT_EPOCHS
from construct.distill.config import DistillConfig
from construct.distill.trainer import distill
from construct.evaluate.run import evaluate_predictions
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.refine import RefineConfig, refine
from construct.runs import RUN_CONFIG
from construct.runtime import PRECISIONS
from construct.store import FeatureStore
from construct.train.config import resolve_config
from construct.train.trainer import train

SPLITS = ("train", "valid", "test")


def pipeline(data: Path, work: Path, precision: str, args, trained: Path | None = None) -> dict:
    """Every phase at `precision`, or, given `trained` (the fp32 pipeline's folder), only inference: its head
    and student refine the test split at `precision`. Test mIoU of the head and of the student. Rerunning in
    the same --workdir reuses finished phases, as the demo does."""
    out = work / precision
    splits = ("test",) if trained else SPLITS
    for split in splits:
        extract(ExtractConfig(data=data, split=split, out=out / f"{split}.zarr", conch=args.conch,
                              segformer=args.segformer, device=args.device, precision=precision, workers=0),
                progress=False)
    runs = trained or out
    if trained is None:
        train(resolve_config("demo", None, features=str(out / "train.zarr"), val_features=str(out / "valid.zarr"),
                             out=str(out / "run"), steps=args.steps, seed=args.seed, workers=0, device=args.device,
                             precision=precision), resume=(out / "run" / RUN_CONFIG).is_file(), progress=False)
    refine(RefineConfig(run=runs / "run", data=data, split="test", out=out / "pred", workers=args.crf_workers,
                        device=args.device, precision=precision), progress=False)
    head = evaluate_predictions(out / "pred", data, "test", classes=BCSS, progress=False)
    if trained is None:
        distill(DistillConfig(run=out / "run", data=data, out=out / "student", epochs=args.student_epochs,
                              seed=args.seed, target_workers=args.crf_workers, device=args.device,
                              precision=precision, **DEMO_STUDENT),
                resume=(out / "student" / RUN_CONFIG).is_file(), progress=False)
    refine(RefineConfig(run=runs / "student", data=data, split="test", out=out / "pred-student",
                        workers=args.crf_workers, device=args.device, precision=precision), progress=False)
    student = evaluate_predictions(out / "pred-student", data, "test", classes=BCSS, progress=False)
    return {"head_mIoU": head["mIoU"], "student_mIoU": student["mIoU"]}


def main() -> None:
    p = base_parser("precision_accuracy", __doc__.splitlines()[0])
    p.set_defaults(conch="random-tiny", segformer="random-tiny", device="cpu")
    p.add_argument("--data", type=Path, default=None, help="dataset root [default: the demo's synthetic set]")
    p.add_argument("--steps", type=int, default=None, help="head training steps [default: the demo preset's]")
    p.add_argument("--student-epochs", type=int, default=DEMO_STUDENT_EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crf-workers", type=int, default=1)
    p.add_argument("--inference-only", action="store_true",
                   help="train the head and the student at fp32 only; compare their inference at both precisions")
    args = p.parse_args()
    figures: dict = {}
    with workdir(args.workdir) as work:
        data = args.data or make_synthetic_dataset(work / "data", SynthConfig(200, 40, 40, args.seed), progress=False)
        for precision in PRECISIONS:
            print(f"pipeline at {precision}...")
            t = time.perf_counter()
            trained = work / "fp32" if args.inference_only and precision != "fp32" else None
            figures[precision] = pipeline(Path(data), work, precision, args, trained)
            figures[precision]["seconds"] = time.perf_counter() - t
        figures["feature_cosine_test"] = feature_cosines(FeatureStore.open(work / "fp32" / "test.zarr"),
                                                         FeatureStore.open(work / "bf16" / "test.zarr"))
    figures["trained_at"] = "fp32" if args.inference_only else "each precision"
    how = "inference only" if args.inference_only else "every phase"
    print(f"fp32 vs bf16 ({how}), test mIoU on {args.data or 'the demo synthetic set'} ({args.conch}, {args.segformer}):")
    drops = []
    for key in ("head_mIoU", "student_mIoU"):
        drop = figures["fp32"][key] - figures["bf16"][key]
        drops.append(drop)
        report(f"{key}: fp32 / bf16 (drop)", f"{figures['fp32'][key]:.2f} / {figures['bf16'][key]:.2f} ({drop:+.2f})")
    for name, cos in figures["feature_cosine_test"].items():
        report(f"stored {name}: cosine bf16 to fp32, mean (min)", f"{cos['mean']:.6f} ({cos['min']:.6f})")
    finish("max_miou_drop", max(drops), figures, args, digits=2)


if __name__ == "__main__":
    main()
