"""`construct train` on bad input: one clear `Error:` line, a non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from click.testing import CliRunner

from construct.cli import main
from construct.store.feature_store import FeatureStore, StoreSpec

from .helpers import copy_store, edit_store_attrs, metrics

FAST = ["--preset", "demo", "--epochs", "1", "--workers", "0", "--device", "cpu", "--quiet"]


def run_cli(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["train", *map(str, args)])
    return result.exit_code, result.output


def assert_one_error(code: int, output: str, *fragments: str) -> None:
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert code != 0, output
    assert "Traceback" not in output, output
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], output


def empty_store(like: FeatureStore, path) -> None:
    """A complete store with zero rows, as `FeatureStore.create` makes it."""
    names = list(like.layout.feature_arrays()) + ["conch_cls", "conch_embedding", "mask"]
    spec = StoreSpec(
        split=like.split, image_ids=[], rel_paths=[], data_root=like.meta["data_root"], classes=like.classes,
        backbones=like.recipes, layout=like.layout, shapes={n: like.shape(n) for n in names if like.has(n)},
        text_embeddings=like.text_embeddings, contrastive_head=like.contrastive_head_state(),
        dataset_fingerprint="empty", preprocessing=like.meta["preprocessing"],
    )
    FeatureStore.create(path, spec)


@pytest.fixture(scope="module")
def bad_stores(stores, tmp_path_factory) -> dict:
    """Broken copies of the small (validation) store, each a realistic way for a store to be wrong."""
    root = tmp_path_factory.mktemp("bad_stores")
    valid = stores["valid"]
    out = {"not_a_store": root / "plain_folder", "missing": root / "nowhere.zarr", "file": root / "file.zarr"}
    out["not_a_store"].mkdir()
    (out["not_a_store"] / "something.txt").write_text("hello")
    out["file"].write_text("not a store")

    out["incomplete"] = copy_store(valid, root / "incomplete.zarr")
    zarr.open_group(str(out["incomplete"]), mode="r+")["done"][3] = 0  # row 3 never written

    out["version"] = copy_store(valid, root / "version.zarr")
    edit_store_attrs(out["version"], lambda a: a.update(format_version=99))

    out["empty"] = root / "empty.zarr"
    empty_store(FeatureStore.open(valid), out["empty"])

    def rename_class(a):
        a["classes"]["classes"][0]["name"] = "TUMOUR"

    out["other_classes"] = copy_store(valid, root / "other_classes.zarr")
    edit_store_attrs(out["other_classes"], rename_class)

    def other_weights(a):
        a["backbones"]["segformer"]["fingerprint"] = "0" * 64

    out["other_backbones"] = copy_store(valid, root / "other_backbones.zarr")
    edit_store_attrs(out["other_backbones"], other_weights)

    out["no_teacher"] = copy_store(valid, root / "no_teacher.zarr")
    shutil.rmtree(out["no_teacher"] / "seg_s3")

    out["no_b9"] = copy_store(valid, root / "no_b9.zarr")
    shutil.rmtree(out["no_b9"] / "conch_b9")
    return out


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["feature store not found"]),
    ("not_a_store", ["not a construct feature store"]),
    ("file", ["not a construct feature store"]),
    ("incomplete", ["incomplete", "11/12 rows"]),
    ("version", ["format version 99"]),
    ("empty", ["0 rows"]),
    ("no_teacher", ["lacks seg_s3"]),
    ("no_b9", ["lacks conch_b9"]),
])
def test_bad_train_store(bad_stores, tmp_path, case, fragments):
    code, output = run_cli("--features", bad_stores[case], "--out", tmp_path / "run", *FAST)
    assert_one_error(code, output, str(bad_stores[case]), *fragments)
    assert not (tmp_path / "run" / "config.json").exists()  # nothing started


@pytest.mark.parametrize("case, fragments", [
    ("missing", ["feature store not found"]),
    ("not_a_store", ["not a construct feature store"]),
    ("incomplete", ["incomplete"]),
    ("version", ["format version 99"]),
    ("other_classes", ["different classes"]),
    ("other_backbones", ["different backbones"]),
    ("no_b9", ["conch_b9 is missing"]),
    ("empty", ["0 rows"]),
])
def test_bad_validation_store(stores, bad_stores, tmp_path, case, fragments):
    code, output = run_cli("--features", stores["train"], "--val-features", bad_stores[case],
                           "--out", tmp_path / "run", *FAST)
    assert_one_error(code, output, str(bad_stores[case]), *fragments)


def test_validation_store_without_masks(stores, tmp_path):
    code, output = run_cli("--features", stores["train"], "--val-features", stores["train"],
                           "--out", tmp_path / "run", *FAST)
    assert_one_error(code, output, "no ground-truth masks")


def test_no_distill_trains_without_the_teacher(bad_stores, tmp_path):
    """--no-distill reads no SegFormer features: a store without them trains."""
    code, output = run_cli("--features", bad_stores["no_teacher"], "--out", tmp_path / "run", "--no-distill",
                           "--batch-size", "4", *FAST)
    assert code == 0, output
    assert "loss_distill" not in metrics(tmp_path / "run")[0]


def test_cli_trains_reports_parameters_and_resumes(stores, tmp_path):
    run = tmp_path / "run"
    code, output = run_cli("--features", stores["train"], "--val-features", stores["valid"], "--out", run,
                           "--no-contrast", "--no-text-init", *FAST)
    assert code == 0, output
    meta = json.loads((run / "config.json").read_text())
    assert f"{meta['n_trainable']:,} trainable parameters" in output
    assert "WARNING: random backbone weights" in output
    assert meta["train"]["contrast"] is False and meta["train"]["text_init"] is False
    record = metrics(run)[0]
    assert "loss_contrast" not in record and "loss_distill" in record and np.isfinite(record["val_mIoU"])
    # a second run into the same folder is refused; --resume of a finished run is a no-op
    code, output = run_cli("--features", stores["train"], "--out", run, *FAST)
    assert_one_error(code, output, "already holds a run", "--resume")
    moved = tmp_path / "moved"
    run.rename(moved)  # a run folder that was moved still resumes, into its new place
    code, output = run_cli("--features", stores["train"], "--out", moved, "--resume", "--quiet")
    assert code == 0, output
    assert len(metrics(moved)) == 1 and not run.exists()
    # the command it was started with, --resume added, continues it (placement flags may change) ...
    code, output = run_cli("--features", stores["train"], "--out", moved, "--no-contrast", "--resume", *FAST,
                           "--loader-workers", "1")
    assert code == 0, output
    # ... but what it learns cannot change on --resume: refused in one line naming the flags
    config = tmp_path / "c.toml"
    config.write_text("lr = 0.5\n")
    for changed, flags in [("--steps, --lr", ["--steps", "99", "--lr", "0.5"]), ("--preset", ["--preset", "paper"]),
                           ("--config", ["--config", config]), ("--no-distill", ["--no-distill"]),
                           ("--loss-weighting", ["--weighting", "uncertainty"])]:
        code, output = run_cli("--features", stores["train"], "--out", moved, "--resume", "--quiet", *flags)
        assert_one_error(code, output, f"{changed} differ", "--resume")
    config.write_text("lr = 1e-3\n")  # the demo preset's: the same setting is no change
    code, output = run_cli("--features", stores["train"], "--out", moved, "--resume", "--quiet", "--config", config)
    assert code == 0, output


def test_resume_without_a_run(tmp_path):
    code, output = run_cli("--features", "x", "--out", tmp_path / "nothing", "--resume")
    assert_one_error(code, output, "not a construct run")


def test_bad_settings(stores, tmp_path):
    code, output = run_cli("--features", stores["train"], "--out", tmp_path / "r", "--batch-size", "1", "--quiet")
    assert_one_error(code, output, "batch size")
    cfg = tmp_path / "c.toml"
    cfg.write_text("lr = 0.1\nmomentum = 3\n")
    code, output = run_cli("--features", stores["train"], "--out", tmp_path / "r", "--config", cfg, "--quiet")
    assert_one_error(code, output, "unknown settings momentum")


def test_negative_memory_budget(stores, tmp_path):
    code, output = run_cli("--features", stores["train"], "--out", tmp_path / "r", "--memory-gb", "-1", "--quiet")
    assert_one_error(code, output, "--memory-gb", "-1")
    assert not (tmp_path / "r").exists()
