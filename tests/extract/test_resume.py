"""Interrupted extraction resumes to exactly the store an uninterrupted run writes; other settings are refused."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.errors import ConstructError
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.store import FeatureStore

from .helpers import N_TRAIN, assert_same_store, files_snapshot, tiny_config


class Interrupted(RuntimeError):
    pass


class FailingBackbone:
    """Wraps a backbone; `taps` raises once it has been called `fail_after` times (the probe counts)."""

    def __init__(self, inner, fail_after: int | None = None):
        self.inner = inner
        self.fail_after = fail_after
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def to(self, device):
        self.inner.to(device)
        return self

    def taps(self, images, *args, **kwargs):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise Interrupted(f"killed after {self.fail_after} calls")
        return self.inner.taps(images, *args, **kwargs)


def test_interrupted_run_resumes_to_the_uninterrupted_store(train_store, synth_data, tiny_backbones, tmp_path):
    conch, seg = tiny_backbones
    out = tmp_path / "train.zarr"
    cfg = tiny_config(synth_data, out, split="train")  # 12 rows, shards and batches of 4
    with pytest.raises(Interrupted):
        extract(cfg, conch, FailingBackbone(seg, fail_after=1 + 2), progress=False)  # probe + 2 batches
    with pytest.raises(ConstructError, match=r"incomplete \(8/12 rows extracted\).*re-run"):
        FeatureStore.open(out)
    partial = FeatureStore.open(out, require_complete=False)
    assert partial.n_done == 8 < partial.n_rows == N_TRAIN
    assert partial.pending_shards() == [(8, 12)]
    counting = FailingBackbone(seg)
    result = extract(cfg, conch, counting, progress=False)
    assert result.n_extracted == 4 and result.n_rows == N_TRAIN
    assert counting.calls == 1 + 1  # the probe and the one missing shard: done rows are not recomputed
    assert FeatureStore.open(out).is_complete
    assert_same_store(out, train_store)
    # a finished store is left as it is
    before = files_snapshot(out)
    assert extract(cfg, *tiny_backbones, progress=False).n_extracted == 0
    assert files_snapshot(out) == before


def test_failure_before_any_shard_leaves_no_store(synth_data, tiny_backbones, tmp_path):
    conch, seg = tiny_backbones
    out = tmp_path / "train.zarr"
    with pytest.raises(Interrupted):
        extract(tiny_config(synth_data, out, split="train"), conch, FailingBackbone(seg, fail_after=1), progress=False)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_bad_tile_after_the_first_shard_keeps_the_done_rows(train_store, synth_data, tiny_backbones, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(synth_data, data)
    tile = sorted((data / "train").glob("*.png"))[6]  # in the second shard
    good = tile.read_bytes()
    tile.write_bytes(good[: len(good) // 2])
    out = tmp_path / "train.zarr"
    cfg = tiny_config(data, out, split="train")
    with pytest.raises(ConstructError) as e:
        extract(cfg, *tiny_backbones, progress=False)
    msg = str(e.value)
    assert msg.startswith(str(tile)) and "truncated" in msg and "re-run to resume" in msg and "\n" not in msg
    assert FeatureStore.open(out, require_complete=False).n_done == 4
    tile.write_bytes(good)  # fixed: the same bytes, so the same dataset fingerprint
    assert extract(cfg, *tiny_backbones, progress=False).n_extracted == 8
    assert_same_store(out, train_store, same_data_root=False)


# ---- a real SIGKILL ----------------------------------------------------------------------------------
N_KILL = 96  # three shards of the CLI's 32 rows: the kill lands while shards are still to come


@pytest.fixture(scope="module")
def kill_data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("kill") / "data",
                                  SynthConfig(n_train=N_KILL, n_valid=0, n_test=0, seed=9), progress=False)


KILL_SCRIPT = Path(__file__).resolve().parents[1] / "kill_after.py"


def cli_extract(data, out, *before: str) -> list[str]:
    """The extract command line; `before` puts the kill script and its arguments in front of it."""
    head = [str(KILL_SCRIPT), *before] if before else ["-m", "construct"]
    return [sys.executable, *head, "extract", "--data", str(data), "--split", "train", "--out", str(out),
            "--conch", "random-tiny", "--segformer", "random-tiny", "--batch-size", "4", "--workers", "0", "--quiet"]


def test_sigkill_then_rerun_equals_an_uninterrupted_run(kill_data, tiny_backbones, tmp_path):
    # The uninterrupted reference runs in this process with the settings the command line uses (32-row
    # shards); the runs below use the same number of threads, so the numbers are bit-identical.
    reference = tmp_path / "reference.zarr"
    extract(ExtractConfig(data=kill_data, out=reference, conch="random-tiny", segformer="random-tiny", batch_size=4,
                          workers=0), *tiny_backbones, progress=False)
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}

    out = tmp_path / "killed.zarr"
    # The process kills itself once its first shard is written: two of the three are left.
    proc = subprocess.run(cli_extract(kill_data, out, "shard", "1", "0"), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    n_done = FeatureStore.open(out, require_complete=False).n_done
    assert n_done == 32  # the shard written before the kill, whole
    with pytest.raises(ConstructError, match="incomplete"):
        FeatureStore.open(out)

    rerun = subprocess.run(cli_extract(kill_data, out), env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{N_KILL} rows; extracted {N_KILL - n_done} now" in rerun.stdout
    assert "random backbone weights" in rerun.stderr
    assert_same_store(out, reference)


# ---- resuming with other settings is refused ----------------------------------------------------------
@pytest.fixture
def store_copy(train_store, tmp_path):
    out = tmp_path / "train.zarr"
    shutil.copytree(train_store, out)
    return out


def _refused(cfg, backbones, store) -> str:
    before = files_snapshot(store)
    with pytest.raises(ConstructError) as e:
        extract(cfg, *backbones, progress=False)
    assert files_snapshot(store) == before, "a refused resume touched the store"
    msg = str(e.value)
    assert msg.startswith(str(store)) and "refusing to mix features" in msg and "\n" not in msg
    return msg


def test_other_segformer_spec_is_refused(store_copy, synth_data, tiny_backbones):
    cfg = tiny_config(synth_data, store_copy, split="train", segformer="random")
    msg = _refused(cfg, (tiny_backbones[0], None), store_copy)  # builds the full-size MiT-B1 from the spec
    assert "different settings" in msg and "backbones.segformer" in msg


def test_other_store_dtype_is_refused(store_copy, synth_data, tiny_backbones):
    msg = _refused(tiny_config(synth_data, store_copy, split="train", store_dtype="int8"), tiny_backbones, store_copy)
    assert "layout.store_dtype" in msg


def test_other_data_is_refused(store_copy, synth_data, tiny_backbones, tmp_path):
    msg = _refused(tiny_config(synth_data, store_copy, split="train", limit=8), tiny_backbones, store_copy)
    assert "dataset_fingerprint" in msg
    data = tmp_path / "changed"
    shutil.copytree(synth_data, data)
    tile = sorted((data / "train").glob("*.png"))[0]
    Image.fromarray(np.zeros((224, 224, 3), np.uint8)).save(tile)  # same name, other content (and size)
    msg = _refused(tiny_config(data, store_copy, split="train"), tiny_backbones, store_copy)
    assert f"1 image file(s) changed since their features were extracted (e.g. train/{tile.name})" in msg
    (data / "train" / "extra+0[1000].png").write_bytes(tile.read_bytes())  # one more tile
    msg = _refused(tiny_config(data, store_copy, split="train"), tiny_backbones, store_copy)
    assert "dataset_fingerprint" in msg


def test_the_same_data_elsewhere_resumes(store_copy, synth_data, tiny_backbones, tmp_path):
    """Moving the dataset folder does not invalidate a store: names and sizes identify the data."""
    data = tmp_path / "moved"
    shutil.copytree(synth_data, data)
    assert extract(tiny_config(data, store_copy, split="train"), *tiny_backbones, progress=False).n_extracted == 0


def test_other_split_is_refused(store_copy, synth_data, tiny_backbones):
    msg = _refused(tiny_config(synth_data, store_copy, split="valid"), tiny_backbones, store_copy)
    assert "split" in msg
