"""`construct refine` on the command line: a summary line on success, one `Error:` line otherwise."""

from __future__ import annotations

import json
import shutil

from click.testing import CliRunner

from construct.cli import main
from construct.data.classes import BCSS
from construct.data.dataset import list_split, read_mask


def test_cli_refine_writes_masks_and_resumes(tiny_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_run.data / "test", data / "test")
    out = tmp_path / "out"
    args = ["refine", "--run", str(tiny_run.run), "--data", str(data), "--out", str(out), "--workers", "0",
            "--no-crf", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "masks: " in result.stdout and "4 written, 0 already there, of 4; gate gt" in result.stdout
    assert "random backbone weights" in result.stderr
    for s in list_split(data, "test", BCSS):
        read_mask(out / f"{s.image_id}.png", BCSS, shape=(224, 224))
    assert json.loads((out / "refine.json").read_text())["complete"] is True
    # Re-running resumes (nothing left); a corrupt tile in a fresh folder fails in one line.
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 written, 4 already there" in again.stdout
    bad = list_split(data, "test", BCSS)[0].image_path
    bad.write_bytes(b"\x89PNG truncated")
    failed = CliRunner().invoke(main, [*args[:6], str(tmp_path / "out2"), *args[7:]])
    assert failed.exit_code == 1
    errors = [line for line in failed.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in failed.output


def test_cli_missing_run_is_one_line(tmp_path):
    result = CliRunner().invoke(main, ["refine", "--run", str(tmp_path / "nope"), "--data", str(tmp_path)])
    assert result.exit_code == 1
    assert result.stderr.strip().count("\n") == 0 and "not a construct run" in result.stderr
