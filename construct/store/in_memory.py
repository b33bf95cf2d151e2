"""Reading small Zarr stores whole into RAM.

Zarr 3.1's reads of a few rows go through its async machinery at about 13 ms per array and call, which is
more than a small head's or student's whole training step (docs/design.md section 3). A
store that fits in memory is read once, as stored (int8 or uint8, not decoded), and sliced there.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_MEMORY_GB = 4.0  # per process: a few thousand tiles' features or targets; full BCSS-WSSS streams


def gib(memory_gb: float) -> int:
    return int(memory_gb * 2**30)


def read_whole_if_fits(group, names: Sequence[str], budget_bytes: int) -> dict[str, np.ndarray] | None:
    """The named arrays of a Zarr group as numpy arrays, or None when together they exceed the budget."""
    if sum(group[n].nbytes for n in names) > budget_bytes:
        return None
    return {n: np.asarray(group[n][...]) for n in names}
