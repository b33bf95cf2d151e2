"""`construct demo`: every phase on the embedded synthetic data with random-tiny backbones, in one folder,
stage 2 (a distilled student) included.

The folder keeps what each phase made, under the names the phases use by default, so a user can rerun
any single phase by hand (the commands are printed). Running the demo again in the same folder reuses
the finished phases: the data is the same for the same settings, extraction and training resume, refine
skips written masks.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from construct import __version__
from construct.atomic import write_text_atomic
from construct.errors import ConstructError

DEMO_BACKBONE = "random-tiny"  # no download, seconds per phase on a CPU
DEMO_PRESET = "demo"
DEMO_DEVICE = "cpu"  # the demo's numbers are the CPU's (a GPU sums in another order)
# Stage 2 in the demo: the lightest student, trained briefly on crops, so the whole demo stays short.
DEMO_STUDENT = {"arch": "segformer", "encoder": "mobilenet-v3-small", "crop": 96, "lr": 3e-3, "batch_size": 16}
DEMO_STUDENT_EPOCHS = 3
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.html"


@dataclass
class DemoConfig:
    out: Path = Path("construct-demo")
    n_train: int = 200
    n_valid: int = 40
    n_test: int = 40
    seed: int = 0
    steps: int | None = None  # None: the demo preset's
    crf_workers: int = 2
    student_epochs: int = DEMO_STUDENT_EPOCHS
    precision: str = "auto"  # every phase's (construct.runtime.resolve_precision)
    progress: bool = True

    @property
    def data(self) -> Path:
        return self.out / "data"

    @property
    def features(self) -> Path:
        return self.out / "features"

    @property
    def run(self) -> Path:
        return self.out / "run"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions"

    @property
    def student(self) -> Path:
        return self.out / "student"

    @property
    def student_predictions(self) -> Path:
        return self.out / "predictions-student"


@dataclass
class DemoResult:
    metrics: dict  # the eval JSON, with "baselines" and "phases" (seconds per phase)
    seconds: float

    @property
    def beats_baselines(self) -> bool:
        return all(self.metrics["mIoU"] > b["mIoU"] for b in self.metrics["baselines"].values())


def _phases(cfg: DemoConfig) -> list[tuple[str, str, Callable[[], str]]]:
    """(name, equivalent command, action returning a one-line summary), in pipeline order."""
    from construct.data.synth import SynthConfig, make_synthetic_dataset
    from construct.distill.config import DistillConfig
    from construct.distill.trainer import distill
    from construct.extract.config import ExtractConfig
    from construct.extract.extractor import extract
    from construct.refine import RefineConfig, refine
    from construct.runs import is_run
    from construct.train.config import resolve_config
    from construct.train.trainer import train

    def synth() -> str:
        make_synthetic_dataset(cfg.data, SynthConfig(cfg.n_train, cfg.n_valid, cfg.n_test, cfg.seed),
                               progress=cfg.progress)
        return f"{cfg.n_train} train, {cfg.n_valid} valid, {cfg.n_test} test tiles"

    def extract_split(split: str) -> Callable[[], str]:
        def run() -> str:
            r = extract(ExtractConfig(data=cfg.data, split=split, out=cfg.features / f"{split}.zarr",
                                      conch=DEMO_BACKBONE, segformer=DEMO_BACKBONE, device=DEMO_DEVICE,
                                      precision=cfg.precision),
                        progress=cfg.progress)
            return f"{r.n_rows} rows, {r.n_extracted} extracted now ({r.images_per_s:.1f} img/s)"
        return run

    def train_head() -> str:
        tc = resolve_config(DEMO_PRESET, None, features=str(cfg.features / "train.zarr"),
                            val_features=str(cfg.features / "valid.zarr"), out=str(cfg.run), steps=cfg.steps,
                            seed=cfg.seed, device=DEMO_DEVICE, precision=cfg.precision)
        r = train(tc, resume=is_run(cfg.run), progress=cfg.progress)
        return f"{r.n_trainable:,} trainable parameters, best val mIoU {r.best_miou:.2f}"

    def refine_test() -> str:
        r = refine(RefineConfig(run=cfg.run, data=cfg.data, split="test", out=cfg.predictions,
                                workers=cfg.crf_workers, device=DEMO_DEVICE, precision=cfg.precision),
                   progress=cfg.progress)
        if r.n_written == 0:
            return f"all {r.n_skipped} masks already written"
        return f"{r.n_written + r.n_skipped} masks (gate {r.gate}, TTA + CRF, {r.tiles_per_s:.1f} tiles/s)"

    def distill_student() -> str:
        dc = DistillConfig(run=cfg.run, data=cfg.data, out=cfg.student, epochs=cfg.student_epochs, seed=cfg.seed,
                           target_workers=cfg.crf_workers, device=DEMO_DEVICE, precision=cfg.precision,
                           **DEMO_STUDENT)
        done = is_run(cfg.student)
        r = distill(dc, resume=done, progress=cfg.progress)
        return f"{r.n_parameters:,} student parameters, best val mIoU {r.best_miou:.2f}"

    def refine_student() -> str:
        r = refine(RefineConfig(run=cfg.student, data=cfg.data, split="test", out=cfg.student_predictions,
                                workers=cfg.crf_workers, device=DEMO_DEVICE, precision=cfg.precision),
                   progress=cfg.progress)
        if r.n_written == 0:
            return f"all {r.n_skipped} masks already written"
        return f"{r.n_written + r.n_skipped} masks (gate {r.gate}, no TTA, no CRF, {r.tiles_per_s:.1f} tiles/s)"

    o = cfg.out
    # The commands print every setting the phases pass, so that each reproduces its phase by hand.
    on_cpu = f"--device {DEMO_DEVICE}" + (f" --precision {cfg.precision}" if cfg.precision != "auto" else "")
    student_flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in DEMO_STUDENT.items())
    return [
        ("synth", f"construct synth --out {cfg.data} --train {cfg.n_train} --valid {cfg.n_valid} "
                  f"--test {cfg.n_test} --seed {cfg.seed}", synth),
        ("extract train", f"construct extract --data {cfg.data} --split train --out {o}/features/train.zarr "
                          f"--conch {DEMO_BACKBONE} --segformer {DEMO_BACKBONE} {on_cpu}", extract_split("train")),
        ("extract valid", f"construct extract --data {cfg.data} --split valid --out {o}/features/valid.zarr "
                          f"--conch {DEMO_BACKBONE} --segformer {DEMO_BACKBONE} {on_cpu}", extract_split("valid")),
        ("train", f"construct train --features {o}/features/train.zarr --val-features {o}/features/valid.zarr "
                  f"--out {cfg.run} --preset {DEMO_PRESET} --seed {cfg.seed} {on_cpu}"
                  + (f" --steps {cfg.steps}" if cfg.steps else ""),
         train_head),
        ("refine", f"construct refine --run {cfg.run} --data {cfg.data} --split test --out {cfg.predictions} "
                   f"--crf-workers {cfg.crf_workers} {on_cpu}",
         refine_test),
        ("distill", f"construct distill --run {cfg.run} --data {cfg.data} --out {cfg.student} {student_flags} "
                    f"--epochs {cfg.student_epochs} --seed {cfg.seed} --crf-workers {cfg.crf_workers} {on_cpu}",
         distill_student),
        ("refine student", f"construct refine --run {cfg.student} --data {cfg.data} --split test "
                           f"--out {cfg.student_predictions} --crf-workers {cfg.crf_workers} {on_cpu}", refine_student),
    ]


def run_demo(cfg: DemoConfig, echo: Callable[[str], None] = print) -> DemoResult:
    """Run every phase, print each with its time, write metrics.json and report.html into `cfg.out`."""
    from construct.data.classes import BCSS
    from construct.evaluate.run import evaluate_predictions

    if cfg.out.exists() and not cfg.out.is_dir():
        raise ConstructError(f"{cfg.out}: exists and is not a folder")
    start = time.perf_counter()
    phases = _phases(cfg)
    timings: dict[str, float] = {}
    for i, (name, command, action) in enumerate(phases, start=1):
        echo(f"[{i}/{len(phases) + 1}] {name}: {command}")
        t0 = time.perf_counter()
        summary = action()
        timings[name] = time.perf_counter() - t0
        echo(f"      {summary} ({timings[name]:.1f} s)")

    eval_cmd = (f"construct eval --pred {cfg.predictions} --student-pred {cfg.student_predictions} "
                f"--data {cfg.data} --split test --baselines --json {cfg.out / METRICS_FILE} "
                f"--report {cfg.out / REPORT_FILE} --features {cfg.features}/train.zarr --run {cfg.run}")
    echo(f"[{len(phases) + 1}/{len(phases) + 1}] eval: {eval_cmd}")
    t0 = time.perf_counter()
    # The JSON is written once, below, with the phase times added; the report here.
    metrics = evaluate_predictions(cfg.predictions, cfg.data, "test", classes=BCSS,
                                   report_path=cfg.out / REPORT_FILE, features=cfg.features / "train.zarr",
                                   progress=cfg.progress, baselines=True, run=cfg.run,
                                   student_pred=cfg.student_predictions)
    timings["eval"] = time.perf_counter() - t0
    seconds = time.perf_counter() - start
    metrics["demo"] = {"version": __version__, "config": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in asdict(cfg).items()},
                       "phases": timings, "seconds": seconds}
    write_text_atomic(cfg.out / METRICS_FILE, json.dumps(metrics, indent=2, allow_nan=False) + "\n")
    echo(f"      ({timings['eval']:.1f} s)")
    return DemoResult(metrics, seconds)
