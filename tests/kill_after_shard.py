"""`python tests/kill_after_shard.py K RANK ARGS...`: run `construct ARGS` and SIGKILL this very process right
after it has written (and marked done) its K-th store shard, when its torchrun RANK is RANK (0 alone).

A kill at a known point of the run, made by the process itself: no polling of the store from outside,
which on a busy machine lands anywhere (or after the run has finished)."""

from __future__ import annotations

import os
import signal
import sys

from construct.cli import main
from construct.store.feature_store import FeatureStore


def die_after(k: int) -> None:
    write_shard, written = FeatureStore.write_shard, [0]

    def write_then_die(self, *args, **kwargs):
        write_shard(self, *args, **kwargs)
        written[0] += 1
        if written[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)

    FeatureStore.write_shard = write_then_die


if __name__ == "__main__":
    k, rank, *args = sys.argv[1:]
    if os.environ.get("RANK", "0") == rank:
        die_after(int(k))
    main(args, prog_name="construct")
