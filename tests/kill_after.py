"""`python tests/kill_after.py WHAT K RANK ARGS...`: run `construct ARGS` and SIGKILL this very process right
after its K-th WHAT is done, when its torchrun RANK is RANK (0 alone): `shard` (an extract store shard
written and marked done) or `epoch` (a distill epoch recorded and checkpointed).

A kill at a known point of the run, made by the process itself: no polling of its files from outside,
which on a busy machine lands anywhere (or after the run has finished)."""

from __future__ import annotations

import os
import signal
import sys

import construct.distill.trainer
from construct.cli import main
from construct.store.feature_store import FeatureStore

# What to count: (owner, name of the function that finishes one).
POINTS = {"shard": (FeatureStore, "write_shard"), "epoch": (construct.distill.trainer, "_end_epoch")}


def die_after(what: str, k: int) -> None:
    owner, name = POINTS[what]
    finish, done = getattr(owner, name), [0]

    def finish_then_die(*args, **kwargs):
        finish(*args, **kwargs)
        done[0] += 1
        if done[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(owner, name, finish_then_die)


if __name__ == "__main__":
    what, k, rank, *args = sys.argv[1:]
    if os.environ.get("RANK", "0") == rank:
        die_after(what, int(k))
    main(args, prog_name="construct")
