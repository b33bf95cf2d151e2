"""A small synthetic dataset, tiny backbones and reference stores, built once per session."""

from __future__ import annotations

import pytest

from construct.backbones.conch import build_conch
from construct.backbones.segformer import build_segformer
from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.extract.extractor import extract

from .helpers import N_TRAIN, N_VALID, tiny_config


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "data",
                                  SynthConfig(n_train=N_TRAIN, n_valid=N_VALID, n_test=0, seed=5), progress=False)


@pytest.fixture(scope="session")
def tiny_backbones():
    return build_conch("random-tiny"), build_segformer("random-tiny")


@pytest.fixture(scope="session")
def train_store(synth_data, tiny_backbones, tmp_path_factory):
    """An uninterrupted train store (float16, taps conch b3/6/9/12 + seg s3, 4 rows per shard). Read only."""
    out = tmp_path_factory.mktemp("stores") / "train.zarr"
    result = extract(tiny_config(synth_data, out, split="train"), *tiny_backbones, progress=False)
    assert result.n_extracted == N_TRAIN
    return out


@pytest.fixture(scope="session")
def valid_store(synth_data, tiny_backbones, tmp_path_factory):
    """Valid split (masks), two SegFormer stages, one worker process decoding. Read only."""
    out = tmp_path_factory.mktemp("stores") / "valid.zarr"
    extract(tiny_config(synth_data, out, split="valid", seg_stages=(2, 3), workers=1), *tiny_backbones, progress=False)
    return out
