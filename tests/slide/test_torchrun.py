"""`construct slide` under torchrun: slides dealt out to two processes (gloo on CPU), one writer each."""

from __future__ import annotations

import csv
import json
import subprocess

from construct.slide.synthetic import make_synthetic_slide
from distributed.helpers import TIMEOUT_S, env, torchrun  # tests/ is on sys.path (rootdir-relative packages)


def test_two_processes_share_the_slides(tiny_run, tmp_path):
    slides = tmp_path / "slides"
    for i in range(3):
        make_synthetic_slide(slides / f"s{i}.tif", cell=128, seed=i)
    (slides / "broken.svs").write_text("not a slide\n")
    out = tmp_path / "out"
    # --model, not --run: torchrun's own parser would take --run for an abbreviation of its --run-path.
    cmd = torchrun("slide", slides, "--model", tiny_run.run, "--out", out, "--mpp", "2.0", "--device", "cpu",
                   "--batch-size", "4", "--quiet")
    done = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode != 0  # the broken slide fails the batch...
    assert done.stdout.count("slides: ") == 1  # ...and rank 0 alone reports it, with every rank's slides
    assert "3 segmented, 0 already done, 1 failed, of 4" in done.stdout
    assert "broken.svs: not a slide format" in done.stderr
    for i in range(3):
        assert json.loads((out / f"s{i}" / "summary.json").read_text())["tiles"] > 0
    assert len(list(csv.DictReader((out / "summary.csv").open()))) == 3
