"""`torchrun -m construct distill`: two DDP processes share each batch and write one student run."""

from __future__ import annotations

import json

from tests.distributed.helpers import run, torchrun


def test_two_processes_write_one_student_run(tiny_run, student_run, tmp_path):
    out = tmp_path / "student"
    done = run(torchrun("distill", "--teacher", tiny_run.run, "--data", tiny_run.data, "--out", out,
                        "--targets", student_run.targets, "--arch", "fpn", "--encoder", "mobilenet-v3-small",
                        "--epochs", "1", "--batch-size", "4", "--crop", "64", "--device", "cpu", "--quiet"))
    assert done.stdout.count("student:") == 1, done.stdout  # rank 0 reports for both
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1] and (out / "student_best.safetensors").is_file()
    # resumed with more epochs, by two processes again
    run(torchrun("distill", "--teacher", tiny_run.run, "--data", tiny_run.data, "--out", out, "--targets",
                 student_run.targets, "--arch", "fpn", "--encoder", "mobilenet-v3-small", "--epochs", "2",
                 "--batch-size", "4", "--crop", "64", "--device", "cpu", "--quiet", "--resume"))
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
