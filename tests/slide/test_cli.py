"""`construct slide` on the command line: a head run end to end, bad inputs, resume, a killed slide."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import tifffile
from click.testing import CliRunner

from construct.cli import main
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.synthetic import ColourPredictor, make_synthetic_slide


def _bad_inputs(folder: Path, good: Path) -> dict[str, Path]:
    folder.mkdir()
    truncated = folder / "truncated.tif"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    corrupt = folder / "corrupt.tif"
    data = bytearray(data)
    with tifffile.TiffFile(good) as tif:  # zeros over every level's tile data, the directories intact
        for page in tif.pages:
            for offset, count in zip(page.dataoffsets, page.databytecounts):
                data[offset:offset + count] = bytes(count)
    corrupt.write_bytes(bytes(data))
    unknown = folder / "notes.svs"
    unknown.write_text("not a slide\n")
    return {
        "truncated": truncated,
        "corrupt": corrupt,
        "unknown": unknown,
        "glass": make_synthetic_slide(folder / "glass.tif", cell=256, layout=("4444",) * 4).path,
        "tiny": make_synthetic_slide(folder / "tiny.tif", cell=16).path,
        "no_mpp": make_synthetic_slide(folder / "no_mpp.tif", cell=128, mpp=None).path,
    }


def test_cli_segments_with_a_head_run_and_reports_each_bad_slide(tiny_run, synth_slide, tmp_path):
    bad = _bad_inputs(tmp_path / "bad", synth_slide.path)
    manifest = tmp_path / "slides.csv"
    manifest.write_text("path\n" + "\n".join(str(p) for p in bad.values()) + "\n")
    out = tmp_path / "out"
    args = ["slide", str(synth_slide.path), str(manifest), "--run", str(tiny_run.run), "--out", str(out),
            "--mpp", "2.0", "--batch-size", "4", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert "2 segmented, 0 already done, 5 failed, of 7; 1 with no tissue)" in result.stdout
    failed = [line for line in result.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 5
    for key, needle in (("truncated", "unreadable TIFF-based slide"), ("corrupt", "unreadable slide data"),
                        ("unknown", "not a slide format"), ("glass", "no tissue found"), ("no_mpp", "--slide-mpp")):
        assert sum(str(bad[key]) in line and needle in line for line in failed) == 1, (key, failed)
    assert result.stderr.strip().splitlines()[-1].startswith("Error: 5 of 7 slides failed")
    # The good slide is complete; the glass slide has an empty mask and a zero table.
    summary = json.loads((out / "synthetic" / "summary.json").read_text())
    assert summary["mpp"] == 2.0 and summary["tiles"] > 0 and len(summary["model"]["fingerprint"]) == 64
    glass = json.loads((out / "glass" / "summary.json").read_text())
    assert glass["tiles"] == 0 and glass["tissue_mm2"] == 0 and all(c["area_mm2"] == 0 for c in glass["classes"].values())
    assert (tifffile.imread(out / "glass" / "mask.ome.tif") == 4).all()
    assert not (out / ".work").exists()  # no empty scratch folder left behind
    # A slide smaller than one tile (64 px at the model's 2 µm/px) is padded and segmented.
    tiny = json.loads((out / "tiny" / "summary.json").read_text())
    assert tiny["grid_size"] == [32, 32] and tiny["tiles"] == 1 and tiny["tissue_mm2"] > 0
    assert tifffile.imread(out / "tiny" / "mask.ome.tif").shape == (32, 32)
    for key in ("truncated", "corrupt", "unknown", "no_mpp"):
        assert not (out / bad[key].stem).exists()
    # Rerun: finished slides are skipped (the glass one quietly: it was reported once), the failures are
    # still reported; --slide-mpp rescues one.
    again = CliRunner().invoke(main, [*args, "--slide-mpp", "0.5"])
    assert again.exit_code == 1 and "1 segmented, 3 already done, 3 failed, of 7; 1 with no tissue)" in again.stdout
    assert "no tissue found" not in again.stderr
    assert (out / "no_mpp" / "summary.json").is_file()
    rows = (out / "summary.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("slide,folder,mpp,tiles,tissue_mm2,TUM_mm2")
    assert "unclassified_mm2,unclassified_percent_tissue" in rows[0]
    # Only the glass slide left: a rerun has nothing to report and succeeds.
    alone = CliRunner().invoke(main, ["slide", str(bad["glass"]), *args[3:]])
    assert alone.exit_code == 0 and "0 segmented, 1 already done, 0 failed, of 1; 1 with no tissue)" in alone.stdout


def test_cli_refuses_bad_flags_in_one_line(tiny_run, synth_slide, tmp_path):
    base = ["slide", str(synth_slide.path), "--run", str(tiny_run.run), "--out", str(tmp_path / "o")]
    for extra, needle in ((["--overlap", "224"], "--overlap 224"), (["--mpp", "-1"], "--mpp -1"),
                          (["--tissue-threshold", "3"], "--tissue-threshold 3"),
                          (["--slide-mpp", "352.8"], "--slide-mpp 352.8: expected 0.05 to 20 µm/px")):
        result = CliRunner().invoke(main, base + extra)
        assert result.exit_code == 1 and needle in result.stderr and "Traceback" not in result.output
    missing = CliRunner().invoke(main, ["slide", str(tmp_path / "none"), "--run", str(tiny_run.run), "--out",
                                        str(tmp_path / "o")])
    assert missing.exit_code == 1 and "slide not found" in missing.stderr


KILLER = """
import os, signal
from pathlib import Path
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.synthetic import ColourPredictor

class Dies(ColourPredictor):
    def scores(self, images01, gate, labels=None, pred_threshold=0.5):
        if self.seen >= 8:
            os.kill(os.getpid(), signal.SIGKILL)
        return super().scores(images01, gate, labels, pred_threshold)

segment_slides([Path({slide!r})], SlideConfig(out=Path({out!r}), target_mpp=1.0, batch_size=4), Dies(),
               progress=False)
"""


def test_killed_slide_restarts_cleanly(synth_slide, tmp_path):
    out = tmp_path / "out"
    script = KILLER.format(slide=str(synth_slide.path), out=str(out))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2]),
                                                        os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    assert not (out / "synthetic").exists()  # nothing half written where outputs go
    assert (out / ".work" / "synthetic").is_dir()  # only scratch
    predictor = ColourPredictor()
    result = segment_slides([synth_slide.path], SlideConfig(out=out, target_mpp=1.0, batch_size=4), predictor,
                            progress=False)
    assert len(result.done) == 1 and not result.failed and not (out / ".work" / "synthetic").exists()
    assert predictor.seen == result.done[0]["tiles"]  # the slide started again, whole
    fresh = tmp_path / "fresh"
    segment_slides([synth_slide.path], SlideConfig(out=fresh, target_mpp=1.0, batch_size=4), ColourPredictor(),
                   progress=False)
    assert np.array_equal(tifffile.imread(out / "synthetic" / "mask.ome.tif"),
                          tifffile.imread(fresh / "synthetic" / "mask.ome.tif"))


def test_resolution_comes_from_the_run(tiny_run, synth_slide, tmp_path):
    from construct.runs import read_run_config, run_mpp, write_run_config

    assert run_mpp(read_run_config(tiny_run.run)) == 0.25  # extract's default, BCSS-WSSS's resolution
    old = tiny_run.copy_run(tmp_path / "old_run")  # a run extracted before `extract --mpp`
    meta = read_run_config(old)
    del meta["store"]["preprocessing"]["mpp"]
    write_run_config(old, {k: v for k, v in meta.items() if k not in ("format", "format_version", "package_version")})
    result = CliRunner().invoke(main, ["slide", str(synth_slide.path), "--run", str(old), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1 and "records no training resolution" in result.stderr and "--mpp" in result.stderr


def test_a_student_run_segments_a_slide(student_run, synth_slide, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["slide", str(synth_slide.path), "--run", str(student_run.run), "--out",
                                       str(out), "--batch-size", "4", "--quiet", "--mpp", "2.0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "synthetic" / "summary.json").read_text())
    assert summary["model"]["kind"] == "student" and summary["model"]["backbones"] == {}
    assert summary["tiles"] > 0 and set(np.unique(tifffile.imread(out / "synthetic" / "mask.ome.tif"))) <= {0, 1, 2, 3, 4}
    from construct.inference.factory import load_predictor

    assert load_predictor(student_run.run).mpp == 0.25  # the teacher's training tiles'


def test_a_student_reads_larger_windows_and_a_head_run_refuses_them(student_run, tiny_run, synth_slide, tmp_path):
    out = tmp_path / "out"
    base = ["slide", str(synth_slide.path), "--out", str(out), "--batch-size", "2", "--quiet", "--mpp", "2.0"]
    result = CliRunner().invoke(main, [*base, "--run", str(student_run.run), "--tile-size", "320"])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "synthetic" / "summary.json").read_text())
    assert summary["tile_size"] == 320 and summary["overlap"] == 56  # a quarter of the 224 px training tile
    for run, size, needle in ((student_run.run, "300", "multiple of 32"), (student_run.run, "160", "at least"),
                              (tiny_run.run, "320", "a head run reads only its training tile")):
        bad = CliRunner().invoke(main, [*base, "--run", str(run), "--tile-size", size])
        assert bad.exit_code == 1 and f"--tile-size {size}" in bad.stderr and needle in bad.stderr, bad.output
        assert "Traceback" not in bad.output and len(bad.stderr.strip().splitlines()) == 1
