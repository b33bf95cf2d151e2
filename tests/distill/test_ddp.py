"""`torchrun -m construct distill`: two DDP processes share each batch and write one student run; killed
after an epoch and resumed, they end where the uninterrupted run ends, bit for bit."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from construct.runs import WEIGHT_FILES
from tests.distributed.helpers import TIMEOUT_S, env, run, torchrun

KILL_SCRIPT = Path(__file__).resolve().parents[1] / "kill_after.py"


def _args(tiny_run, student_run, out: Path) -> list:
    return ["distill", "--model", tiny_run.run, "--data", tiny_run.data, "--out", out, "--targets", student_run.targets,
            "--arch", "fpn", "--encoder", "mobilenet-v3-small", "--epochs", "2", "--batch-size", "4", "--crop", "64",
            "--device", "cpu", "--quiet"]


def _history(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_write_one_student_run_and_resume_it_exactly(tiny_run, student_run, tmp_path):
    reference = tmp_path / "reference"
    done = run(torchrun(*_args(tiny_run, student_run, reference)))
    assert done.stdout.count("student:") == 1, done.stdout  # rank 0 reports for both
    assert [h["epoch"] for h in _history(reference)] == [1, 2] and (reference / "student_best.safetensors").is_file()

    out = tmp_path / "student"
    killed = subprocess.run(torchrun(*_args(tiny_run, student_run, out), program=(KILL_SCRIPT, "epoch", "1", "0")),
                            env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert killed.returncode != 0, "the run finished although rank 0 was to kill itself after epoch 1"
    assert [h["epoch"] for h in _history(out)] == [1]
    run(torchrun(*_args(tiny_run, student_run, out), "--resume"))  # two processes again, from the checkpoint
    assert _history(out) == _history(reference)
    for name in WEIGHT_FILES["student"].values():
        got, want = load_file(str(out / name)), load_file(str(reference / name))
        assert got.keys() == want.keys()
        assert not [k for k in want if not torch.equal(got[k], want[k])], f"{name} differs from the uninterrupted run"
