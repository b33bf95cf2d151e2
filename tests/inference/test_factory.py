"""`load_predictor`: one way from a run folder to a predictor, for refine, slide, distill and the API."""

from __future__ import annotations

import json

import pytest

from construct.backbones import create_backbone
from construct.backbones.weights import module_fingerprint
from construct.errors import ConstructError
from construct.head.io import load_head
from construct.inference.factory import PredictorOptions, load_predictor
from construct.runs import read_run_config, write_run_config


def test_a_head_run_is_described_before_conch_is_built(tiny_run):
    wrong = create_backbone("conch", "random-tiny", 112)  # other weights: refused, but only when built
    model = load_predictor(tiny_run.run, device="cpu", backbone=wrong)
    head, meta = load_head(tiny_run.run)
    assert model.kind == "head" and model.tta and model.crf and model.n_variants == 6
    assert model.settings["head_fingerprint"] == model.fingerprint == module_fingerprint(head)
    assert model.settings["conch_fingerprint"] == meta["backbones"]["conch"]["fingerprint"]
    assert model.settings["precision"] == meta["store"]["preprocessing"].get("precision", "fp32")
    with pytest.raises(ConstructError, match="conch: "):
        _ = model.predictor
    built = load_predictor(tiny_run.run, device="cpu", backbone=tiny_run.conch, tta=False, precision="bf16")
    assert built.predictor.fingerprint == model.fingerprint and built.n_variants == 1
    assert built.predictor.precision == "bf16" and built.settings["precision"] == "bf16"


def test_options_are_one_dataclass(tiny_run):
    options = PredictorOptions(head="last", device="cpu")
    assert load_predictor(tiny_run.run, options).options == options
    assert load_predictor(tiny_run.run, options, tta=False).options == PredictorOptions("last", "cpu", tta=False)
    with pytest.raises(TypeError):
        load_predictor(tiny_run.run, colour="blue")
    with pytest.raises(ConstructError, match="--head middle"):
        load_predictor(tiny_run.run, head="middle")


def test_a_head_of_other_classes_is_refused(tiny_run, tmp_path):
    run = tiny_run.copy_run(tmp_path / "run")
    meta = read_run_config(run)
    meta["classes"]["classes"] = meta["classes"]["classes"][:2]
    write_run_config(run, {k: v for k, v in meta.items() if k not in ("format", "format_version", "package_version")})
    with pytest.raises(ConstructError, match="head has 4 classes, the run's class set 2"):
        load_predictor(run)


def test_a_student_run_needs_no_backbone(student_run):
    model = load_predictor(student_run.run, device="cpu")
    assert (model.kind, model.tta, model.crf, model.n_variants, model.backbones) == ("student", False, False, 1, {})
    assert model.settings == {"student_fingerprint": model.fingerprint, "flip_tta": False, "precision": "fp32"}
    assert model.predictor.fingerprint == model.fingerprint
    assert model.mpp == 0.25  # its teacher's training tiles'
    assert json.dumps(model.describe())  # what slide summaries record
