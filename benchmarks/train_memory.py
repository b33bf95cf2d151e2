"""Training streams from the store: peak memory on a 10x larger store stays (nearly) the same.

Two stores of the arrays `construct train` reads (paper preset), 1k and 10k rows by default, are written
through the FeatureStore API with random rows (extracting 10k tiles would take hours here; memory does
not depend on the values). The shipped trainer then runs on each in a fresh process, the same number
of steps (default: one epoch of the small store), so any difference comes from the store's size alone.
To bound the large run, the child process hands `train()` only the first --steps batches of its epoch
plan; everything else (opening, checks, loader processes, checkpoints) is the shipped trainer.
Peak RSS is the kernel's high-water mark of the trainer process (VmHWM) and of its loader process
(getrusage of the trainer's children; it counts the pages it shares with the trainer too).

    .venv/bin/python benchmarks/train_memory.py         # ends with `rss_ratio: X` (Linux: reads /proc)
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import base_parser, finish, report, synthetic_store, training_taps, workdir

from construct.backbones.registry import create_backbone
from construct.train.config import resolve_config


def child(store: str, run: str, steps: int, workers: int, device: str) -> None:
    """Train on `store` in this process; print the peaks as one JSON line."""
    import construct.train.trainer as trainer
    from construct.train.data import epoch_batches

    if steps:
        trainer.epoch_batches = lambda *a: epoch_batches(*a)[:steps]
    cfg = resolve_config("paper", None, features=store, out=run, epochs=1, workers=workers, device=device)
    res = trainer.train(cfg, progress=False)
    record = json.loads((res.run / "metrics.jsonl").read_text().splitlines()[-1])
    print(json.dumps({
        "trainer_peak_mb": own_peak_mb(),
        "loader_peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,  # KiB on Linux
        "seconds": res.seconds, "steps": record["step"],
    }))


def own_peak_mb() -> float:
    """This process's peak RSS (VmHWM, Linux). Not ru_maxrss: after fork + exec it also holds what the
    forked copy of the (large) parent had resident before the exec."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in lines if line.startswith("VmHWM:")) / 1024  # kB


def measure(store: Path, run: Path, steps: int, workers: int, device: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(store), str(run), str(steps), str(workers), device]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training on {store} failed:\n{done.stderr[-3000:]}")
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    peaks["total_peak_mb"] = peaks["trainer_peak_mb"] + peaks["loader_peak_mb"]
    return peaks


def main() -> None:
    p = base_parser("train_memory", __doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs=2, default=[1000, 10000], metavar=("SMALL", "LARGE"))
    p.add_argument("--steps", type=int, default=100, help="steps per run (0: a whole epoch of each store)")
    p.add_argument("--store-dtype", default="float16")
    p.add_argument("--workers", type=int, default=1, help="loader processes (1: the loader process is measured too)")
    args = p.parse_args()
    cfg = resolve_config("paper")
    names = training_taps(cfg)
    with workdir(args.workdir) as work:
        conch = create_backbone("conch", args.conch, 224)
        segformer = create_backbone("segformer", args.segformer, 224)
        stores = {}
        for n in args.rows:
            print(f"writing a {n}-row {args.store_dtype} store of random rows ({', '.join(names)})...")
            t = time.perf_counter()
            stores[n] = synthetic_store(work / f"rows-{n}.zarr", n, conch, segformer, names, args.store_dtype).path
            print(f"  {time.perf_counter() - t:.0f} s")
        del conch, segformer
        runs = {}
        for n, store in stores.items():
            print(f"training on the {n}-row store in a fresh process...")
            runs[n] = measure(store, work / f"run-{n}-{time.time_ns()}", args.steps, args.workers, args.device)
    small, large = (runs[n] for n in args.rows)
    ratio = large["total_peak_mb"] / small["total_peak_mb"]
    print("peak RSS of `construct train` (paper preset):")
    for n, r in runs.items():
        report(f"{n} rows, {r['steps']} steps: trainer + loader",
               f"{r['trainer_peak_mb']:.0f} + {r['loader_peak_mb']:.0f} = {r['total_peak_mb']:.0f} MB")
    report("store rows ratio", args.rows[1] / args.rows[0])
    finish("rss_ratio", ratio, {"runs": {str(n): r for n, r in runs.items()}, "taps": names}, args, digits=2)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()
