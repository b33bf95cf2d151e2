"""`construct distill`: the student run, resume, and one-line refusals."""

from __future__ import annotations

import dataclasses
import json
import socket

import pytest
from click.testing import CliRunner

from construct.cli import main
from construct.data.classes import BCSS
from construct.student.io import load_student
from construct.student.model import build_student
from construct.distill.targets import check_classes
from construct.distill.trainer import distill
from construct.errors import ConstructError
from construct.runs import WEIGHT_FILES

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


def test_resume_continues_from_the_last_epoch(tiny_run, student_run, tmp_path):
    out = tmp_path / "student"
    first = distill(quick_config(tiny_run, out, epochs=1, targets=student_run.targets), progress=False)
    again = distill(quick_config(tiny_run, out, epochs=2, targets=student_run.targets), resume=True, progress=False)
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2] and first.best_miou is not None and again.run == out
    with pytest.raises(ConstructError, match="already holds a run; use --resume"):
        distill(quick_config(tiny_run, out, targets=student_run.targets), progress=False)
    with pytest.raises(ConstructError, match="was started with another student"):
        distill(quick_config(tiny_run, out, encoder="resnet18", targets=student_run.targets), resume=True,
                progress=False)


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
    one_line_error(base + ["--encoder", "resnet9000"], "--encoder resnet9000: unknown; expected one of resnet18, ")
    one_line_error(base + ["--arch", "deeplab"], "--arch deeplab: unknown; expected one of unet, fpn, segformer")
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
