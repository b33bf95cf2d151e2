"""`construct distill`: the student run, resume, and one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
import torch
from click.testing import CliRunner

import construct.distill.trainer as trainer
from construct.cli import main
from construct.data.classes import BCSS
from construct.distill.targets import check_classes
from construct.distill.trainer import distill
from construct.errors import ConstructError
from construct.runs import WEIGHT_FILES
from construct.student.io import load_student
from construct.student.model import build_student
from tiny_runs import quick_config


def test_student_run_holds_weights_metrics_and_its_kind(student_run):
    run = student_run.run
    meta = json.loads((run / "config.json").read_text())
    assert meta["kind"] == "student" and meta["student"]["encoder"] == "mobilenet-v3-small"
    assert meta["random_weights"] is True  # the teacher ran on random backbones
    assert all((run / f).is_file() for f in WEIGHT_FILES["student"].values())
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and all(0 <= h["val_mIoU"] <= 100 for h in history)
    assert student_run.best_miou == max(h["val_mIoU"] for h in history)
    assert set(history[0]["log_vars"]) == {"mse", "ce"}
    student, _ = load_student(run)
    assert sum(p.numel() for p in student.parameters()) == student_run.n_parameters


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way out may catch it."""


def _history(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _weights(run) -> dict:
    from safetensors.torch import load_file

    return {which: load_file(str(run / name)) for which, name in WEIGHT_FILES["student"].items()}


def test_resume_after_a_kill_gives_the_uninterrupted_student(tiny_run, student_run, tmp_path, monkeypatch):
    """Killed after epoch 1's checkpoint and resumed, the run ends bit for bit as an uninterrupted one."""
    config = dict(epochs=3, targets=student_run.targets)
    reference = distill(quick_config(tiny_run, tmp_path / "reference", **config), progress=False)
    end_epoch = trainer._end_epoch

    def killed_after_first_epoch(*args, **kwargs):
        end_epoch(*args, **kwargs)
        raise Killed

    out = tmp_path / "student"
    monkeypatch.setattr(trainer, "_end_epoch", killed_after_first_epoch)
    with pytest.raises(Killed):
        distill(quick_config(tiny_run, out, **config), progress=False)
    monkeypatch.setattr(trainer, "_end_epoch", end_epoch)
    assert [h["epoch"] for h in _history(out)] == [1]
    again = distill(quick_config(tiny_run, out, **config), resume=True, progress=False)
    assert _history(out) == _history(reference.run) and [h["epoch"] for h in _history(out)] == [1, 2, 3]
    got, want = _weights(out), _weights(reference.run)
    for which in want:
        assert got[which].keys() == want[which].keys()
        differ = [k for k in want[which] if not torch.equal(got[which][k], want[which][k])]
        assert not differ, f"student_{which} differs in {differ[:5]}"
    assert again.best_miou == reference.best_miou and again.final_loss == reference.final_loss


def test_resume_refusals(tiny_run, student_run, tmp_path):
    out = student_run.run
    with pytest.raises(ConstructError, match="already holds a run; use --resume"):
        distill(quick_config(tiny_run, out, targets=student_run.targets), progress=False)
    with pytest.raises(ConstructError, match="was started with another student"):
        distill(quick_config(tiny_run, out, encoder="resnet18", targets=student_run.targets), resume=True,
                progress=False)


def test_cli_resume_refuses_changed_settings_and_keeps_the_runs_own(tiny_run, student_run):
    base = ["distill", "--run", str(tiny_run.run), "--data", str(tiny_run.data), "--out", str(student_run.run),
            "--resume", "--stain-augment", "0.05"]  # as the run was made: not a change
    one_line_error([*base, "--epochs", "9", "--lr", "0.5", "--lab-augment", "0.3"],  # more epochs may extend it
                   "--resume continues the student with the settings it was started with; --lr, --lab-augment differ")


def test_a_resumed_run_keeps_its_settings_and_those_added_since_keep_its_behaviour(tmp_path):
    from construct.distill.config import RESUME_FROM_COMMAND, DistillConfig, resumed_distill_config

    made = DistillConfig(run=tmp_path / "teacher", data=tmp_path / "data", out=tmp_path / "old", lr=0.01,
                         arch="fpn", epochs=4).to_dict()
    del made["lab_augment"]  # a run from before --lab-augment
    command = {k: v for k, v in dataclasses.asdict(DistillConfig(
        run=tmp_path / "moved", data=tmp_path / "data", out=tmp_path / "new", device="cpu", memory_gb=0.5)).items()
        if k in RESUME_FROM_COMMAND}
    cfg = resumed_distill_config(made, command)
    assert (cfg.lr, cfg.arch, cfg.lab_augment, cfg.epochs) == (0.01, "fpn", 0.0, 4)  # no transfer half-way
    assert (cfg.run, cfg.out, cfg.device, cfg.memory_gb) == (tmp_path / "moved", tmp_path / "new", "cpu", 0.5)
    assert resumed_distill_config(made, {**command, "epochs": 30}).epochs == 30  # a finished run extended


def test_fractional_epochs_stop_part_way(tiny_run, student_run, tmp_path, monkeypatch):
    """--epochs 0.5 of 3 batches an epoch (12 tiles, batch 4) trains ceil(1.5) = 2 steps, as train counts."""
    steps = []
    objective = trainer.objective
    monkeypatch.setattr(trainer, "objective", lambda *a, **k: steps.append(1) or objective(*a, **k))
    distill(quick_config(tiny_run, tmp_path / "s", epochs=0.5, targets=student_run.targets), progress=False)
    assert len(steps) == 2 and [h["epoch"] for h in _history(tmp_path / "s")] == [1]


def test_a_non_finite_loss_stops_in_one_line(tiny_run, student_run, tmp_path, monkeypatch):
    calls = {"n": 0}
    objective = trainer.objective

    def nan_at_step_2(*args, **kwargs):
        calls["n"] += 1
        total, terms = objective(*args, **kwargs)
        return (total * float("nan"), terms) if calls["n"] == 2 else (total, terms)

    monkeypatch.setattr(trainer, "objective", nan_at_step_2)
    with pytest.raises(ConstructError, match=r"loss became nan at epoch 1 step 2 \(loss=nan, mse=.*distill stopped"):
        distill(quick_config(tiny_run, tmp_path / "s", targets=student_run.targets), progress=False)
    assert not (tmp_path / "s" / "distill_checkpoint.pt").exists()  # nothing written from a bad step


def one_line_error(args: list[str], says: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.output


def test_runs_of_the_other_kind_are_refused(tiny_run, student_run, tmp_path):
    one_line_error(["train", "--features", "x.zarr", "--out", str(student_run.run), "--resume"],
                   "is a student run (made by `construct distill`); `train --resume` needs a head run")
    one_line_error(["distill", "--run", str(tiny_run.run), "--data", str(tiny_run.data), "--out",
                    str(tiny_run.run), "--resume"],
                   "is a head run (made by `construct train`); `distill --resume` needs a student run")
    one_line_error(["distill", "--run", str(student_run.run), "--data", str(tiny_run.data), "--out",
                    str(tmp_path / "s")], "`distill --run` needs a head run")


def test_bad_input_is_one_line(tiny_run, tmp_path):
    base = ["distill", "--run", str(tiny_run.run), "--data", str(tiny_run.data), "--out", str(tmp_path / "s")]
    for flag, value in (("--encoder", "resnet9000"), ("--arch", "deeplab")):  # closed sets: click's choices
        result = CliRunner().invoke(main, base + [flag, value])
        assert result.exit_code == 2 and f"Invalid value for '{flag}': '{value}' is not one of" in result.output
    with pytest.raises(ConstructError, match="--encoder resnet9000: unknown; expected one of resnet18, "):
        build_student("unet", "resnet9000", 6)  # the Python API checks them too
    one_line_error(base + ["--targets", str(tmp_path / "none.zarr")], "teacher targets not found")
    one_line_error(base + ["--classes", "luad"], "the run's classes (TUM=0, STR=1, LYM=2, NEC=3, background=4) "
                                                  "differ from the dataset's (--classes luad: TE=0, NEC=1, LYM=2, TAS=3")
    assert not (tmp_path / "s").exists()


def test_a_run_is_distilled_whatever_its_class_descriptions(tmp_path):
    """Descriptions only seed the prototypes (a run trained before they changed is still a teacher); the
    names and mask indices are what its masks mean."""
    reworded = dataclasses.replace(BCSS, classes=tuple(dataclasses.replace(c, description="older words")
                                                       for c in BCSS.classes))
    check_classes(tmp_path, reworded, BCSS, "bcss")
    swapped = dataclasses.replace(BCSS, classes=(BCSS.classes[1], BCSS.classes[0], *BCSS.classes[2:]))
    with pytest.raises(ConstructError, match="STR=1, TUM=0"):
        check_classes(tmp_path, swapped, BCSS, "bcss")


def test_imagenet_weights_offline_fail_in_one_line(monkeypatch):
    def no_network(*a, **kw):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ConstructError, match="cannot reach .* offline, pass a local file or none"):
        build_student("unet", "resnet18", 5, "imagenet")


def test_encoder_weights_from_a_local_file(tmp_path):
    import torch

    donor = build_student("fpn", "mobilenet-v3-small", 5)
    torch.save(donor.net.encoder.state_dict(), tmp_path / "enc.pt")
    student = build_student("fpn", "mobilenet-v3-small", 5, str(tmp_path / "enc.pt"))
    a, b = donor.net.encoder.state_dict(), student.net.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ConstructError, match="encoder weights file not found"):
        build_student("fpn", "mobilenet-v3-small", 5, str(tmp_path / "missing.pt"))
