"""Training settings: layering and the device-aware loader default."""

import pytest

from construct.errors import ConstructError
from construct.train.config import TrainConfig, resolve_config, resumed_config


def test_loader_runs_in_process_on_cpu_and_in_one_process_with_a_gpu():
    cfg = resolve_config("paper")
    assert cfg.workers is None
    assert cfg.loader_workers("cpu") == 0 and cfg.loader_workers("cuda") == 1
    assert resolve_config("paper", None, workers=3).loader_workers("cpu") == 3


def test_layers_apply_in_order(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text("lr = 0.5\nepochs = 4\n")
    cfg = resolve_config("demo", f, epochs=9)
    assert (cfg.lr, cfg.epochs, cfg.steps, cfg.warmup) == (0.5, 9, None, 0.05)
    assert TrainConfig().lr == 2e-5 and resolve_config("paper").batch_size == 10


def test_negative_workers_refused():
    with pytest.raises(ConstructError, match="workers"):
        resolve_config("paper", None, workers=-1)


def test_paper_preset_takes_the_authors_choices_and_demo_keeps_ours():
    paper, demo = resolve_config("paper"), resolve_config("demo")
    assert (paper.cam_align_corners, paper.bank_init, paper.fg_threshold_scope) == (True, "random", "image")
    assert (demo.cam_align_corners, demo.bank_init, demo.fg_threshold_scope) == (False, "empty", "class")
    assert resolve_config("paper", None, bank_init="empty").bank_init == "empty"  # flags still win


@pytest.mark.parametrize("setting, value", [
    ("bank_init", "zeros"), ("fg_threshold_scope", "batch"), ("loss_weighting_lr", 0.0)])
def test_bad_fidelity_settings_refused(setting, value):
    with pytest.raises(ConstructError, match=setting):
        resolve_config("paper", None, **{setting: value})


def test_a_run_started_before_a_setting_existed_resumes_without_it():
    """An old paper-preset run has no bank_init etc. in its run config: it resumes as it trained (ours),
    not with the preset's newer values; a run that recorded them keeps them."""
    saved = resolve_config("paper", None, lr=0.5).to_dict()
    assert resumed_config(saved).to_dict() == saved
    for new in ("cam_align_corners", "bank_init", "fg_threshold_scope", "loss_weighting_lr"):
        del saved[new]
    old = resumed_config(saved)
    assert (old.cam_align_corners, old.bank_init, old.fg_threshold_scope, old.lr) == (False, "empty", "class", 0.5)
