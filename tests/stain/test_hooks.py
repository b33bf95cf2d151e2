"""Stain work where the pipeline meets it: the reference a run records, and what refine, eval, slide and
distill do and write about the input's stain."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from construct.data.classes import BCSS
from construct.errors import ConstructError
from construct.evaluate.run import evaluate_predictions
from construct.runs import read_run_config
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.synthetic import ColourPredictor
from construct.stain.methods import DEFAULT_METHOD
from construct.stain.reference import StainReference
from construct.stain.runs import RUN_KEY, TEACHER_KEY, run_reference
from construct.store import FeatureStore


def test_extract_and_train_record_the_training_tiles_reference(tiny_run):
    meta = read_run_config(tiny_run.run)
    ref = StainReference.from_dict(meta[RUN_KEY])
    store = FeatureStore.open(meta["store"]["path"])
    assert StainReference.from_dict(store.meta["stain_reference"]) == ref
    assert ref.n_pixels > 1000 and ref.source.startswith("train split")


def test_refine_normalises_by_default_and_records_it(tiny_run, tmp_path):
    tiny_run.refine(tmp_path / "m")
    stain = json.loads((tmp_path / "m" / "refine.json").read_text())["stain"]
    assert stain["requested"] == stain["applied"] == DEFAULT_METHOD
    assert stain["reference"] == read_run_config(tiny_run.run)[RUN_KEY]
    assert set(stain["distance"]) == {"delta_e", "h_angle_deg", "e_angle_deg", "h_scale", "e_scale"}
    metrics = evaluate_predictions(tmp_path / "m", tiny_run.data, "test", classes=BCSS, progress=False,
                                   report_path=tmp_path / "report.html")
    assert metrics["stain"] == stain
    html = (tmp_path / "report.html").read_text()
    assert "run&#x27;s reference" in html and html.count("data:image/png") >= 2


def test_stain_norm_none_and_resume_with_another_method_is_refused(tiny_run, tmp_path):
    tiny_run.refine(tmp_path / "m", stain_norm="none")
    stain = json.loads((tmp_path / "m" / "refine.json").read_text())["stain"]
    assert stain["applied"] == "none" and stain["input"] is None
    with pytest.raises(ConstructError, match="stain_norm"):
        tiny_run.refine(tmp_path / "m", stain_norm="macenko")
    with pytest.raises(ConstructError, match="--stain-norm vahadane"):
        tiny_run.refine(tmp_path / "other", stain_norm="vahadane")


def test_a_folder_of_glass_falls_back_with_a_warning(tiny_run, tmp_path):
    folder = tmp_path / "glass"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((224, 224, 3), 240, np.uint8)).save(folder / f"g{i}.png")
    result = tiny_run.refine(tmp_path / "m", images=folder)
    stain = json.loads((tmp_path / "m" / "refine.json").read_text())["stain"]
    assert result.n_written == 3 and stain["applied"] == "none" and "too little tissue" in stain["warning"]


def test_a_run_without_a_recorded_reference_computes_it_from_its_store(tiny_run, tmp_path):
    run = tiny_run.copy_run(tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    recorded = meta.pop(RUN_KEY)
    (run / "config.json").write_text(json.dumps(meta))
    assert run_reference(run, meta) == StainReference.from_dict(recorded)  # the store's
    meta["store"]["path"] = str(tmp_path / "gone.zarr")
    assert run_reference(run, meta) is None


def test_slide_summary_records_the_slides_stain(synth_slide_for_stain, tiny_run, tmp_path):
    cfg = SlideConfig(out=tmp_path, target_mpp=1.0, batch_size=8, run=tiny_run.run, stain_norm="reinhard")
    result = segment_slides([synth_slide_for_stain], cfg, ColourPredictor(), progress=False)
    assert not result.failed
    stain = result.done[0]["stain"]
    assert stain["requested"] == "reinhard" and stain["source"].startswith("slide ")
    assert stain["applied"] == "reinhard" or stain["warning"]


def test_student_records_its_own_and_its_teachers_reference(student_run, tiny_run):
    meta = read_run_config(student_run.run)
    assert meta[TEACHER_KEY] == read_run_config(tiny_run.run)[RUN_KEY]
    own = StainReference.from_dict(meta[RUN_KEY])
    assert own.source.startswith("train split") and meta["distill"]["stain_augment"] > 0
    assert run_reference(student_run.run, meta) == own


@pytest.mark.parametrize("kw, match", [({"stain_augment": 1.5}, "--stain-augment 1.5"),
                                       ({"lab_augment": -0.1}, "--lab-augment -0.1"),
                                       ({"stain_norm": "vahadane"}, "--stain-norm vahadane")])
def test_distill_refuses_bad_stain_settings(tiny_run, tmp_path, kw, match):
    from construct.distill.trainer import distill
    from tiny_runs import quick_config

    with pytest.raises(ConstructError, match=match):
        distill(quick_config(tiny_run, tmp_path / "s", **kw), conch=tiny_run.conch, progress=False)
    assert not (tmp_path / "s").exists()


def test_a_finished_refine_is_not_estimated_again_and_keeps_its_record(tiny_run, tmp_path, monkeypatch):
    import construct.refine.pipeline as pipeline

    tiny_run.refine(tmp_path / "m")
    first = json.loads((tmp_path / "m" / "refine.json").read_text())["stain"]

    def no_estimate(*args, **kwargs):
        raise AssertionError("the input's stain was estimated again for a finished folder")

    monkeypatch.setattr(pipeline, "fit_input", no_estimate)
    result = tiny_run.refine(tmp_path / "m")
    assert result.n_written == 0
    assert json.loads((tmp_path / "m" / "refine.json").read_text())["stain"] == first


def test_a_runs_reference_is_resolved_once_until_its_config_changes(tiny_run, tmp_path, monkeypatch):
    import os

    import construct.stain.runs as runs

    run = tiny_run.copy_run(tmp_path / "run")
    calls = []
    resolve = runs.run_reference
    monkeypatch.setattr(runs, "run_reference", lambda *a: calls.append(a) or resolve(*a))
    first = runs.reference_of_run(run)
    assert runs.reference_of_run(run) == first and len(calls) == 1  # a batch of slides pays once
    meta = json.loads((run / "config.json").read_text())
    meta.pop(RUN_KEY)
    meta["store"]["path"] = str(tmp_path / "gone.zarr")
    (run / "config.json").write_text(json.dumps(meta))
    stat = (run / "config.json").stat()
    os.utime(run / "config.json", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # coarse clocks
    assert runs.reference_of_run(run) is None and len(calls) == 2


def test_distill_estimates_its_training_tiles_stain_once(tiny_run, tmp_path, monkeypatch):
    from dataclasses import replace

    import construct.stain.normalize as normalize
    import construct.stain.runs as runs
    from construct.distill.trainer import distill
    from tiny_runs import quick_config

    runs._reference_of_files.cache_clear()
    estimated = []
    estimate = runs.estimate_images

    def counted(batches, source):
        estimated.append(source)
        return estimate(batches, source)

    for module in (runs, normalize):
        monkeypatch.setattr(module, "estimate_images", counted)
    # A copy of the teacher has no targets yet: they are made (normalised) and the run record written.
    cfg = replace(quick_config(tiny_run, tmp_path / "s", stain_norm="reinhard"),
                  run=tiny_run.copy_run(tmp_path / "teacher"))
    distill(cfg, conch=tiny_run.conch, progress=False)
    assert (tmp_path / "teacher" / "targets").is_dir()
    assert [s for s in estimated if s.startswith("train split")] == [f"train split of {cfg.data}"]
    own = read_run_config(tmp_path / "s")[RUN_KEY]
    assert own is not None and own["source"] == f"train split of {cfg.data}"
