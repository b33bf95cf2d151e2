"""Running a construct command (or a script wrapping it) under torchrun."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

N_TRAIN, N_VALID = 128, 4  # four of the command line's 32-row shards: two per process
SHARD_ROWS = 32
TIMEOUT_S = 180


def torchrun(*args: str, nproc: int = 2, program: tuple[str, ...] = ("-m", "construct")) -> list[str]:
    """`torchrun --standalone` (rendezvous on localhost, a free port) of `python -m construct ARGS` (or of
    another `program`: a script and its own arguments before ARGS)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            *map(str, program), *map(str, args)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--data", data, "--split", "train", "--out", out, "--conch", "random-tiny",
            "--segformer", "random-tiny", "--batch-size", "4", "--workers", "0", "--quiet", *extra]
