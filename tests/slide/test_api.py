"""`Segmenter.segment_slide`: the outputs of `construct slide`, through the same pipeline."""

from __future__ import annotations

import json

import numpy as np
import tifffile
from click.testing import CliRunner

import construct
from construct.cli import main

TIMES = ("seconds", "seconds_by_phase")  # wall-clock, differ between any two runs


def test_segment_slide_writes_what_the_command_writes(student_run, synth_slide, tmp_path):
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    result = CliRunner().invoke(main, ["slide", str(synth_slide.path), "--run", str(student_run.run), "--out",
                                       str(cli_out), "--batch-size", "4", "--quiet", "--mpp", "2.0"])
    assert result.exit_code == 0, result.output
    seg = construct.load(student_run.run, device="cpu")
    summary = seg.segment_slide(synth_slide.path, api_out, mpp=2.0, batch_size=4, progress=False)
    folder = synth_slide.path.stem
    assert sorted(p.name for p in (api_out / folder).iterdir()) == sorted(p.name for p in (cli_out / folder).iterdir())
    assert np.array_equal(tifffile.imread(api_out / folder / "mask.ome.tif"),
                          tifffile.imread(cli_out / folder / "mask.ome.tif"))
    cli_summary = json.loads((cli_out / folder / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k not in TIMES} == {k: v for k, v in cli_summary.items()
                                                                    if k not in TIMES}
    assert (api_out / "summary.csv").is_file()
    again = seg.segment_slide(synth_slide.path, api_out, mpp=2.0, progress=False)  # finished: read back
    assert again == json.loads((api_out / folder / "summary.json").read_text())
