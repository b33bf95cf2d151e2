"""The schedule counts optimiser steps: presets, --epochs as a convenience, warm-up + poly, the plan line."""

from __future__ import annotations

import json

import pytest

from construct.errors import ConstructError
from construct.store import FeatureStore
from construct.train.config import TrainConfig, resolve_config
from construct.train.trainer import MIN_CLASS_EXAMPLES, describe_plan, lr_factor, train


def test_paper_preset_is_the_papers_step_count_whatever_the_store():
    cfg = resolve_config("paper")
    # 2 epochs of BCSS-WSSS train: 23,422 tiles in full batches of 10
    assert cfg.steps == 2 * (23_422 // 10) == 4684 and cfg.epochs is None
    assert cfg.total_steps(batches_per_epoch=6) == cfg.total_steps(batches_per_epoch=2342) == 4684


def test_epochs_are_converted_and_replace_the_presets_steps(tmp_path):
    cfg = resolve_config("paper", None, epochs=2.5)
    assert cfg.steps is None and cfg.total_steps(batches_per_epoch=6) == 15  # ceil(2.5 * 6)
    f = tmp_path / "s.json"
    f.write_text(json.dumps({"epochs": 3}))
    assert resolve_config("paper", f).total_steps(4) == 12
    assert resolve_config("paper", f, steps=7).total_steps(4) == 7  # a flag's steps beat the file's epochs
    with pytest.raises(ConstructError, match="not both"):
        resolve_config("paper", None, steps=5, epochs=1)
    with pytest.raises(ConstructError, match="--steps must be"):
        resolve_config("paper", None, steps=0)


def test_warm_up_then_poly_decay_by_hand():
    # 10 steps, 2 of warm-up, power 1: 1/2, 2/2, then 1 - (s - 2) / 8
    got = [lr_factor(s, total=10, warmup=2, power=1.0) for s in range(10)]
    assert got == pytest.approx([0.5, 1.0, 1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8])
    assert lr_factor(3, total=10, warmup=0, power=0.9) == pytest.approx((1 - 3 / 10) ** 0.9)
    assert lr_factor(10, total=10, warmup=0, power=0.9) == 0.0


def test_plan_line_and_the_too_short_warning(stores):
    store = FeatureStore.open(stores["train"])
    counts = store.labels.sum(axis=0)
    rare = int(counts.argmin())
    cfg = TrainConfig(features=str(stores["train"]), steps=30, batch_size=10, lr=1e-3, warmup=0.1)
    lines = describe_plan(cfg, store, per_epoch=6, total=30, n_trainable=1234)
    assert lines[0].startswith(f"plan: {store.n_rows} tiles, batch 10, 30 steps (5 epochs), lr 0.001")
    assert "warm-up 3 steps" in lines[0] and "contrast 0.2" in lines[0] and "1,234 trainable" in lines[0]
    # the rarest class is seen counts[rare] * 30 * 10 / 60 times: far fewer than the minimum
    assert len(lines) == 2 and store.classes.names[rare] in lines[1] and "--steps" in lines[1]
    need = int(lines[1].rsplit("--steps ", 1)[1].split()[0])
    assert counts[rare] * need * 10 / store.n_rows >= MIN_CLASS_EXAMPLES
    assert len(describe_plan(cfg, store, 6, need, 1234)) == 1  # that many steps: no warning


def test_training_runs_the_planned_steps_and_logs_each_term(make_cfg, tmp_path):
    cfg = make_cfg(steps=9, eval_every=4, log_every=2, aux_ramp=0.5)
    result = train(cfg, progress=False)
    records = [json.loads(line) for line in (result.run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 9]  # every 4 steps, and at the end (the last epoch cut short)
    assert records[0]["epoch"] == pytest.approx(4 / 6, abs=1e-3)
    assert records[-1]["lr"] == 0.0
    log = [json.loads(line.split(" ", 2)[2]) for line in (result.run / "train.log").read_text().splitlines()
           if '"w_cls"' in line and '"val_mIoU"' not in line]
    assert [r["step"] for r in log] == [2, 4, 6, 8]
    # the auxiliary weights ramp in over the first half (4.5 → 4 steps): 2/4 at step 2, full from step 4
    assert log[0]["w_contrast"] == pytest.approx(cfg.w_contrast * 2 / 4) and log[0]["w_cls"] == cfg.w_cls
    assert log[-1]["w_distill"] == pytest.approx(cfg.w_distill)
    assert all(k in log[0] for k in ("loss_cls", "loss_distill", "loss_contrast", "loss_total"))
