"""`construct refine` throughput (tiles/s) with 0, 1 and 2 CRF workers, and where its time goes.

Setup: a run trained (paper preset, one short epoch) on a store extracted from synthetic tiles with
full-size random backbones, then refine over the synthetic valid split (6-way TTA, Dense CRF).
Throughput: `construct refine` itself (the CLI, in a process of its own), per --workers value.
Shares: `refine()` in this process with no CRF pool, with the CONCH passed in wrapped by a timer and
the head timed by forward hooks; the CRF is then timed alone (`crf_refine`) on the scores that run
saved. Anything else (decoding, CAM upsampling and fusion, PNG and score writes) is `other`.

    .venv/bin/python benchmarks/refine_throughput.py    # ends with `tiles_per_s: X` (2 CRF workers)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import base_parser, finish, report, sync, synthetic_data, workdir

from construct.backbones.registry import create_backbone
from construct.data.dataset import list_split, read_image
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.head.io import load_head
from construct.inference.crf import crf_refine
from construct.refine.config import REFINE_META, SCORES_DIR, RefineConfig
from construct.refine.pipeline import refine
from construct.runtime import resolve_device
from construct.store import FeatureStore
from construct.train.config import resolve_config
from construct.train.trainer import train


class TimedConch:
    """The CONCH backbone, with the wall time spent in its forward added up."""

    def __init__(self, conch, device: torch.device):
        self.conch, self.device, self.seconds = conch, device, 0.0

    @property
    def recipe(self):
        return self.conch.recipe

    def to(self, device):
        self.conch.to(device)
        return self

    def taps(self, images01: torch.Tensor, with_embedding: bool = True) -> dict[str, torch.Tensor]:
        t = time.perf_counter()
        out = self.conch.taps(images01, with_embedding=with_embedding)
        sync(self.device)
        self.seconds += time.perf_counter() - t
        return out


def timed_head(run: Path, device: torch.device):
    """The run's head, with a `seconds` attribute that its forward passes add to."""
    head, _ = load_head(run)
    head.seconds = 0.0
    started: list[float] = []
    head.register_forward_pre_hook(lambda *_: started.append(time.perf_counter()))

    def stop(*_) -> None:
        sync(device)
        head.seconds += time.perf_counter() - started.pop()

    head.register_forward_hook(stop)
    return head


def cli_refine(run: Path, data: Path, out: Path, workers: int, args) -> float:
    """tiles/s of `construct refine` as a user runs it (its refine.json; model building not counted).
    A process of its own: the CRF pool's spawned workers then import only what the CLI imports."""
    cmd = [sys.executable, "-m", "construct", "refine", "--run", str(run), "--data", str(data), "--split", "valid",
           "--out", str(out), "--workers", str(workers), "--batch-size", str(args.batch_size), "--device",
           args.device, "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"construct refine failed:\n{done.stderr[-3000:]}")
    return float(json.loads((out / REFINE_META).read_text())["tiles_per_s"])


def main() -> None:
    p = base_parser("refine_throughput", __doc__.splitlines()[0])
    p.add_argument("--tiles", type=int, default=24, help="valid tiles refined per measurement")
    p.add_argument("--batch-size", type=int, default=8, help="refine's default")
    p.add_argument("--precision", default="fp32", help="of extraction, hence of refine's CONCH: fp32 or bf16")
    args = p.parse_args()
    device = resolve_device(args.device)
    with workdir(args.workdir) as work:
        data = synthetic_data(work / "data", n_train=20, n_valid=args.tiles)
        conch = create_backbone("conch", args.conch, 224)
        segformer = create_backbone("segformer", args.segformer, 224)
        print("extracting 20 train tiles and training a head on them...")
        ext = extract(ExtractConfig(data=data, split="train", out=work / "train.zarr", conch=args.conch,
                                    segformer=args.segformer, device=args.device, precision=args.precision),
                      conch, segformer, progress=False)
        del segformer
        run = train(resolve_config("paper", None, features=str(ext.store), out=str(work / f"run-{time.time_ns()}"),
                                   epochs=1, workers=0, device=args.device), progress=False).run

        print(f"refine, {args.tiles} tiles, one process, timed by parts...")
        timed_conch, head = TimedConch(conch, device), timed_head(run, device)
        serial = refine(RefineConfig(run=run, data=data, split="valid", out=work / f"serial-{time.time_ns()}",
                                     workers=0, batch_size=args.batch_size, device=args.device, save_scores=True),
                        conch=timed_conch, head=head, progress=False)
        crf_s = 0.0
        for s in list_split(data, "valid", FeatureStore.open(ext.store).classes):
            scores = np.load(serial.out / SCORES_DIR / f"{s.image_id}.npy").astype(np.float32)
            image = read_image(s.image_path)
            t = time.perf_counter()
            crf_refine(image, scores)
            crf_s += time.perf_counter() - t
        pooled = {}
        for workers in (0, 1, 2):
            print(f"construct refine, {args.tiles} tiles, --workers {workers}...")
            pooled[workers] = cli_refine(run, data, work / f"w{workers}-{time.time_ns()}", workers, args)
    total = serial.seconds
    shares = {"backbone": timed_conch.seconds / total, "head": head.seconds / total, "crf": crf_s / total}
    shares["other"] = 1 - sum(shares.values())
    limit = args.tiles / timed_conch.seconds  # tiles/s if refine did nothing but its CONCH forwards
    print(f"refine, {device}, {args.precision}, batch {args.batch_size}, 6-way TTA + Dense CRF:")
    report("tiles/s, in-process timed run (no CRF pool)", serial.tiles_per_s)
    for workers, tps in pooled.items():
        report(f"construct refine --workers {workers}: tiles/s", tps)
    report("CONCH-bound limit (6 forwards per tile)", limit)
    report("--workers 2 as a share of that limit", f"{pooled[2] / limit:.1%}")
    report("share of one-process time: backbone (CONCH)", f"{shares['backbone']:.1%}")
    report("  head", f"{shares['head']:.1%}")
    report("  CRF", f"{shares['crf']:.1%}")
    report("  other", f"{shares['other']:.1%}")
    figures = {"tiles": args.tiles, "tiles_per_s": {"in_process_timed": serial.tiles_per_s,
                                                      **{f"cli_workers_{w}": v for w, v in pooled.items()}},
               "serial_seconds": {"total": total, "backbone": timed_conch.seconds, "head": head.seconds, "crf": crf_s},
               "shares": shares, "backbone_bound_tiles_per_s": limit, "random_weights": serial.random_weights}
    finish("tiles_per_s", pooled[2], figures, args, digits=2)


if __name__ == "__main__":
    main()
