"""Seeded initialisation that leaves the caller's random state alone (backbones, the head, tests)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

# Fixed seed for `random`/`random-tiny` backbones: a spec must always give the same weights and fingerprint.
RANDOM_INIT_SEED = 20260


@contextmanager
def seeded_init(seed: int = RANDOM_INIT_SEED) -> Iterator[None]:
    """Initialise modules from a fixed seed without disturbing the caller's RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
