"""`construct demo` end to end at reduced size: every phase runs, its outputs stay, and the masks beat
the trivial baselines on the same test split."""

import json

import pytest
from click.testing import CliRunner

from construct.cli import main

# Reduced from the defaults (200/40/40, 720 steps) to keep the suite quick; still clearly learnable.
SIZE = ["--train", "60", "--valid", "12", "--test", "12", "--steps", "120"]
# How far above the stronger baseline the demo must land (mIoU points), so "beats" is not noise.
MARGIN = 10.0


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    result = CliRunner().invoke(main, ["demo", "--out", str(out), *SIZE, "--quiet", "--workers", "0"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_phase_printed_with_its_command_and_the_table(demo_run):
    _, output = demo_run
    for phase in ("synth", "extract train", "extract valid", "train", "refine", "distill", "refine student", "eval"):
        assert f"] {phase}: construct " in output
    assert "baseline: labelled-everywhere" in output and "ours (random backbones, synthetic data)" in output
    assert "ours, distilled student (random backbones, synthetic data)" in output


def test_folder_keeps_each_phase_output(demo_run):
    out, _ = demo_run
    assert (out / "data" / "construct_synth.json").is_file()
    assert (out / "features" / "train.zarr").is_dir() and (out / "features" / "valid.zarr").is_dir()
    assert (out / "run" / "head_best.safetensors").is_file()
    assert len(list((out / "predictions").glob("*.png"))) == 12
    assert (out / "student" / "student_best.safetensors").is_file()
    assert len(list((out / "predictions-student").glob("*.png"))) == 12
    report = (out / "report.html").read_text()
    assert "<table" in report and "learned by the run" in report  # gallery of the trained prototypes


def test_test_miou_of_run_and_student_clearly_beat_the_trivial_baselines(demo_run):
    out, output = demo_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == 12
    baselines = metrics["baselines"]
    assert set(baselines) == {"all-background", "labelled-everywhere"}
    assert metrics["mIoU"] > max(b["mIoU"] for b in baselines.values()) + MARGIN
    assert "beats the trivial baselines" in output
    assert set(metrics["demo"]["phases"]) == {"synth", "extract train", "extract valid", "train", "refine", "distill",
                                              "refine student", "eval"}

    # the student learns from the run's masks: it must clear the same floor, not merely be a percentage
    assert metrics["student"]["n_images"] == 12
    assert metrics["student"]["mIoU"] > max(b["mIoU"] for b in baselines.values()) + MARGIN


def test_rerun_reuses_finished_phases(demo_run):
    out, _ = demo_run
    before = json.loads((out / "metrics.json").read_text())
    result = CliRunner().invoke(main, ["demo", "--out", str(out), *SIZE, "--quiet", "--workers", "0"])
    assert result.exit_code == 0, result.output
    after = json.loads((out / "metrics.json").read_text())
    assert after["mIoU"] == before["mIoU"]
    assert "all 12 masks already written" in result.output
    assert after["student"]["mIoU"] == before["student"]["mIoU"]


def test_other_settings_in_the_same_folder_are_refused(demo_run):
    out, _ = demo_run
    result = CliRunner().invoke(main, ["demo", "--out", str(out), "--train", "61", "--quiet"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("Error:") and "other settings" in last and "Traceback" not in result.output


def test_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path / "afile"), "--quiet"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: {tmp_path / 'afile'}: exists and is not a folder"
