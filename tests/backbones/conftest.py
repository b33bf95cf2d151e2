"""Backbones built once per session: full-size `random` builds take seconds (CONCH ~10 s on 2 cores)."""

from __future__ import annotations

import pytest
import torch

from construct.backbones.conch import build_conch
from construct.backbones.segformer import build_segformer


def build_keeping_rng(builder, *args):
    """Build and report whether the global torch RNG state was left as it was."""
    before = torch.get_rng_state()
    model = builder(*args)
    return model, torch.equal(before, torch.get_rng_state())


@pytest.fixture(scope="session")
def conch_full():
    """(CONCH `random` at 224 px, whether building left the global RNG alone)."""
    return build_keeping_rng(build_conch, "random", 224)


@pytest.fixture(scope="session")
def segformer_full():
    return build_keeping_rng(build_segformer, "random")


@pytest.fixture(scope="session")
def conch_tiny():
    return build_conch("random-tiny")


@pytest.fixture(scope="session")
def segformer_tiny():
    return build_segformer("random-tiny")
