"""Which precision refine, slide and distill run at, and that every record says it: auto is the run's own
choice when it made one, else the hardware's (mocked both ways); a student runs at the precision asked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import construct.runtime as runtime
from construct.data.classes import BCSS
from construct.inference.factory import load_predictor
from construct.inference.student import StudentPredictor
from construct.refine.config import REFINE_META
from construct.runs import RUN_CONFIG
from construct.student.model import Student


def hardware(monkeypatch, native: bool) -> None:
    monkeypatch.setattr(runtime, "native_bf16", lambda device: "AMX" if native else None)


def refine_json(out) -> dict:
    return json.loads((out / REFINE_META).read_text())


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_refine_auto_follows_the_hardware(tiny_run, tmp_path, monkeypatch, native, expected):
    hardware(monkeypatch, native)
    tiny_run.refine(tmp_path / "out", tta=False, crf=False)
    record = refine_json(tmp_path / "out")
    assert record["precision"] == expected and record["settings"]["precision"] == expected


def test_refine_auto_keeps_a_run_s_explicit_choice(tiny_run, tmp_path, monkeypatch):
    hardware(monkeypatch, True)
    run = tiny_run.copy_run(tmp_path / "run")
    meta = json.loads((run / RUN_CONFIG).read_text())
    meta["train"]["precision"] = "fp32"  # as `construct train --precision fp32` records it
    (run / RUN_CONFIG).write_text(json.dumps(meta))
    tiny_run.refine(tmp_path / "out", run=run, tta=False, crf=False)
    assert refine_json(tmp_path / "out")["precision"] == "fp32"
    tiny_run.refine(tmp_path / "out-bf16", run=run, tta=False, crf=False, precision="bf16")  # a flag wins
    assert refine_json(tmp_path / "out-bf16")["precision"] == "bf16"


def test_slide_summary_records_the_precision(tiny_run):
    model = load_predictor(tiny_run.run, precision="bf16", device="cpu", tta=False, backbone=tiny_run.conch)
    assert model.describe()["precision"] == "bf16"


@pytest.mark.parametrize("precision, conv_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_student_runs_at_the_precision_and_its_softmax_in_fp32(precision, conv_dtype):
    torch.manual_seed(0)
    student = Student("fpn", "mobilenet-v3-small", len(BCSS) + 1)
    seen = []
    for m in student.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    probs = StudentPredictor(student, BCSS, 64, flip_tta=True, precision=precision).probabilities(
        torch.rand(2, 3, 64, 64))
    assert set(seen) == {conv_dtype}
    assert probs.dtype == torch.float32
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 64, 64), atol=1e-5)


def test_a_student_run_records_its_precision_and_refine_uses_it(student_run, tiny_run, tmp_path):
    run = Path(shutil.copytree(student_run.run, tmp_path / "student"))
    meta = json.loads((run / RUN_CONFIG).read_text())
    assert meta["precision"] in ("fp32", "bf16")
    meta["distill"]["precision"] = "bf16"  # as `construct distill --precision bf16` records it
    (run / RUN_CONFIG).write_text(json.dumps(meta))
    tiny_run.refine(tmp_path / "out", run=run)
    assert refine_json(tmp_path / "out")["precision"] == "bf16"
