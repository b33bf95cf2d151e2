"""Two processes under torchrun (gloo on the CPU) against one process: a small synthetic dataset, built once."""

from __future__ import annotations

import pytest

from construct.backbones.conch import build_conch
from construct.backbones.segformer import build_segformer
from construct.data.synth import SynthConfig, make_synthetic_dataset
from thread_count import torch_threads

from .helpers import N_TRAIN, N_VALID


@pytest.fixture(autouse=True)
def one_thread():
    """torchrun gives each process one thread (OMP_NUM_THREADS=1): the single-process references here run
    with one thread too (inside each test), so that their numbers are the ones the processes compute."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("dist") / "data",
                                  SynthConfig(n_train=N_TRAIN, n_valid=N_VALID, n_test=0, seed=11), progress=False)


@pytest.fixture(scope="session")
def tiny_backbones():
    return build_conch("random-tiny"), build_segformer("random-tiny")
