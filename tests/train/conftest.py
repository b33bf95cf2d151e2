"""Random-tiny feature stores of the synthetic data, built once per session (about 20 s on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.train.config import TrainConfig, resolve_config
from thread_count import torch_threads

N_TRAIN, N_VALID = 60, 12


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny heads here run no faster on two threads, and on a busy machine two OpenMP threads that
    spin-wait for each other cost up to 10x the time: one thread for each test here (and for the shared
    fixtures that train, in their own bodies)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def stores(tmp_path_factory) -> dict[str, Path]:
    """{'train': store, 'valid': store (with masks)} of random-tiny CONCH + SegFormer features."""
    root = tmp_path_factory.mktemp("train_stores")
    data = make_synthetic_dataset(root / "data", SynthConfig(n_train=N_TRAIN, n_valid=N_VALID, n_test=0),
                                  progress=False)
    out = {}
    for split in ("train", "valid"):
        res = extract(ExtractConfig(data=data, split=split, out=root / f"{split}.zarr", conch="random-tiny",
                                    segformer="random-tiny", workers=0), progress=False)
        out[split] = res.store
    return out


@pytest.fixture()
def make_cfg(stores, tmp_path):
    """TrainConfig on the session stores, fast settings (no loader processes, CPU), overridable."""

    def make(preset: str = "demo", out: Path | str | None = None, **overrides) -> TrainConfig:
        base = dict(features=str(stores["train"]), val_features=str(stores["valid"]),
                    out=str(out or tmp_path / "run"), workers=0, device="cpu", epochs=1)
        if "steps" in overrides:
            base.pop("epochs")
        base.update(overrides)
        return resolve_config(preset, None, **base)

    return make
