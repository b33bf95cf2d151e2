"""`construct refine --run STUDENT_RUN`: the student alone through the same pipeline as the head."""

from __future__ import annotations

import json
import shutil

import numpy as np
import torch
from click.testing import CliRunner

from construct.cli import main
from construct.data.classes import BCSS
from construct.data.dataset import list_split, read_image, read_mask
from construct.head.scores import mask_index_lut
from construct.inference.student import StudentPredictor, predicted_gate
from construct.refine import RefineConfig, refine
from construct.student.io import load_student

BG = BCSS.background_index


def _refine(student_run, tiny_run, out, **kw):
    base = dict(run=student_run.run, data=tiny_run.data, split="test", out=out, workers=0, loader_workers=0)
    base.update(kw)
    return refine(RefineConfig(**base), progress=False)


def _forward(student, samples) -> np.ndarray:
    x = torch.from_numpy(np.stack([read_image(s.image_path) for s in samples])).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return student(x).argmax(dim=1).numpy()


def test_masks_equal_a_plain_forward_plus_argmax(student_run, tiny_run, tmp_path):
    result = _refine(student_run, tiny_run, tmp_path, gate="none")
    assert result.n_written == 4 and (result.tta, result.crf) == (False, False)  # a student's defaults
    meta = json.loads((tmp_path / "refine.json").read_text())
    assert meta["kind"] == "student" and meta["backbones"] == {} and meta["settings"]["crf"] is None
    student, _ = load_student(student_run.run)
    samples = list_split(tiny_run.data, "test", BCSS)
    expected = mask_index_lut(BCSS)[_forward(student, samples)]
    for s, e in zip(samples, expected):
        assert np.array_equal(read_mask(tmp_path / f"{s.image_id}.png", BCSS), e)


def test_gt_gate_keeps_only_the_tile_classes_and_crf_and_tta_are_options(student_run, tiny_run, tmp_path):
    result = _refine(student_run, tiny_run, tmp_path, crf=True, tta=True, save_scores=True)
    assert result.gate == "gt" and (result.tta, result.crf) == (True, True)
    assert json.loads((tmp_path / "refine.json").read_text())["settings"]["crf"]["bilateral_compat"] == 50
    for s in list_split(tiny_run.data, "test", BCSS):
        labelled = set(np.unique(read_mask(s.mask_path, BCSS)).tolist()) - {BG}
        mask = set(np.unique(read_mask(tmp_path / f"{s.image_id}.png", BCSS)).tolist())
        assert mask <= labelled | {BG}
        # The scores the CRF chose from hold the labelled classes and only them (the masks alone would
        # pass as all background): the gate keeps what the tile has, not just removes what it lacks.
        peaks = np.load(tmp_path / "scores" / f"{s.image_id}.npy")[:len(BCSS)].max(axis=(1, 2))
        assert {c.mask_index for c, p in zip(BCSS.classes, peaks) if p > 0} == labelled


def test_pred_gate_uses_the_students_peak_scores():
    probs = torch.zeros(2, 3, 2, 2)  # 2 classes + background
    probs[0, 0, 0, 0] = 0.9  # class 0 peaks above .5 in one pixel
    probs[0, 1] = 0.3
    probs[1, 1, 1, 1] = 0.4  # nothing passes: the best class is kept
    assert predicted_gate(probs, 0.5).tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_cli_refine_on_an_image_folder_defaults_to_pred(student_run, tiny_run, tmp_path):
    images = tmp_path / "tiles"
    images.mkdir()
    for s in list_split(tiny_run.data, "test", BCSS):
        shutil.copy(s.image_path, images / s.image_path.name)
    result = CliRunner().invoke(main, ["refine", "--run", str(student_run.run), "--images", str(images),
                                       "--out", str(tmp_path / "m"), "--workers", "0", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "gate pred, no TTA, no CRF" in result.output and len(list((tmp_path / "m").glob("*.png"))) == 4


def test_student_predictor_scores_are_gated_probabilities(student_run):
    student, _ = load_student(student_run.run)
    p = StudentPredictor(student, BCSS, 224)
    x = torch.rand(2, 3, 224, 224)
    scores, gate = p.scores(x, "labels", torch.tensor([[1, 0, 0, 0], [0, 0, 1, 1]]))
    assert scores.shape == (2, 5, 224, 224) and gate.tolist() == [[1, 0, 0, 0], [0, 0, 1, 1]]
    assert scores[0, 1:4].max() == 0 and scores[1, :2].max() == 0 and scores[:, 4].min() > 0
