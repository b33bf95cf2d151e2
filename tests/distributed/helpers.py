"""Running a construct command under torchrun, and finding one of its processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

N_TRAIN, N_VALID = 128, 4  # four of the command line's 32-row shards: two per process
SHARD_ROWS = 32
TIMEOUT_S = 180


def torchrun(*args: str, nproc: int = 2) -> list[str]:
    """`torchrun --standalone` (rendezvous on localhost, a free port) of `python -m construct ARGS`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "construct", *map(str, args)]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def extract_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["extract", "--data", data, "--split", "train", "--out", out, "--conch", "random-tiny",
            "--segformer", "random-tiny", "--batch-size", "4", "--workers", "0", "--quiet", *extra]


def worker_pid(agent_pid: int, rank: int) -> int | None:
    """The process torchrun (`agent_pid`) started for `rank`: its child whose environment says RANK=rank."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if ppid == agent_pid and f"RANK={rank}".encode() in (stat.parent / "environ").read_bytes().split(b"\0"):
                return int(stat.parent.name)
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return None
