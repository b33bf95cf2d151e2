"""How long `construct --help` takes to start, against importing torch (what it took before the lazy imports).

Each command runs in a fresh interpreter, the two alternating, `--repeats` times; CPU seconds (user + system,
from the children's rusage) are reported beside wall seconds, since on a shared machine the wall time
mostly measures the queue. Runs from a neutral folder with this checkout on PYTHONPATH.

    .venv/bin/python benchmarks/cli_start.py     # ends with `help_over_torch_import: X` (CPU time ratio)
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import base_parser, finish, median, report

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"construct --help": ["-m", "construct", "--help"], "import torch": ["-c", "import torch"]}


def timed(args: list[str], cwd: str) -> tuple[float, float]:
    """(wall, CPU) seconds of one fresh interpreter running `args`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    p = base_parser("cli_start", __doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7, help="runs of each command (medians reported)")
    args = p.parse_args()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: `-m construct` must come from PYTHONPATH
        for _ in range(args.repeats):
            for name, command in COMMANDS.items():
                times[name].append(timed(command, cwd))
    figures = {}
    for name, runs in times.items():
        figures[name] = {"wall_s": median([w for w, _ in runs]), "cpu_s": median([c for _, c in runs])}
        report(f"{name}: wall (median)", figures[name]["wall_s"], "s")
        report(f"{name}: CPU (median)", figures[name]["cpu_s"], "s")
    ratio = figures["construct --help"]["cpu_s"] / figures["import torch"]["cpu_s"]
    finish("help_over_torch_import", ratio, figures, args)


if __name__ == "__main__":
    main()
