"""refine end to end on a tiny trained run: masks, score arrays, refine.json, gating, CRF pool, resumption."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from construct.data.classes import BCSS
from construct.data.dataset import labels_from_mask, list_split, read_image, read_mask
from construct.errors import ConstructError
from construct.evaluate.run import evaluate_predictions
from construct.head.model import HeadOutput
from construct.head.scores import mask_index_lut
from construct.inference.head import predicted_gate
from construct.refine import RefineConfig, refine

BG = BCSS.background_index


def present(mask: np.ndarray) -> set[int]:
    return set(np.unique(mask).tolist())


@pytest.fixture(scope="module")
def test_out(tiny_run, tmp_path_factory):
    """The paper's protocol on the test split: gt gating, 6-way TTA, Dense CRF; with score arrays."""
    out = tmp_path_factory.mktemp("test_out")
    result = tiny_run.refine(out, save_scores=True)
    return out, result


def test_masks_have_the_input_size_and_valid_indices(tiny_run, test_out):
    out, result = test_out
    samples = list_split(tiny_run.data, "test", BCSS)
    assert (result.n_images, result.n_written, result.n_skipped) == (4, 4, 0)
    assert result.gate == "gt" and result.random_weights
    for s in samples:
        image = read_image(s.image_path)
        mask = read_mask(out / f"{s.image_id}.png", BCSS, shape=image.shape[:2])  # checks size and indices
        gt = read_mask(s.mask_path, BCSS)
        labelled = {c.mask_index for c, on in zip(BCSS.classes, labels_from_mask(gt, BCSS)) if on}
        assert present(mask) <= labelled | {BG}  # gt gating: only the classes in the ground truth, or background
        scores = np.load(out / "scores" / f"{s.image_id}.npy")
        assert scores.dtype == np.float16 and scores.shape == (len(BCSS) + 1, *image.shape[:2])
        assert 0 <= scores.min() and scores.max() <= 1
        # and it keeps them: the scores the CRF chose from are positive somewhere for each labelled class
        # and 0 everywhere for the others. (This tiny run's CRF masks may still be all background, which
        # the line above alone would pass.)
        peaks = scores[:len(BCSS)].max(axis=(1, 2))
        assert {c.mask_index for c, p in zip(BCSS.classes, peaks) if p > 0} == labelled


def test_refine_json_records_what_was_run(tiny_run, test_out):
    out, _ = test_out
    meta = json.loads((out / "refine.json").read_text())
    assert meta["complete"] is True and meta["random_weights"] is True
    assert meta["backbones"]["conch"]["spec"] == "random-tiny" and "segformer" not in meta["backbones"]
    assert (meta["gate"], meta["tta"], meta["n_variants"], meta["crf"], meta["split"]) == ("gt", True, 6, True, "test")
    assert meta["n_images"] == 4 and meta["package_version"]
    assert meta["run"] == str(tiny_run.run.resolve())
    assert meta["settings"]["crf"]["bilateral_compat"] == 50


def test_eval_reads_the_predictions(tiny_run, test_out):
    out, _ = test_out
    result = evaluate_predictions(out, tiny_run.data, "test", progress=False)
    assert result["n_images"] == 4 and result["random_weights"] is True and result["n_missing"] == 0


def test_no_crf_masks_are_the_argmax_of_the_scores(tiny_run, tmp_path):
    result = tiny_run.refine(tmp_path, crf=False, save_scores=True)
    assert result.n_written == 4
    lut = mask_index_lut(BCSS)
    for s in list_split(tiny_run.data, "test", BCSS):
        scores = np.load(tmp_path / "scores" / f"{s.image_id}.npy").astype(np.float32)
        mask = read_mask(tmp_path / f"{s.image_id}.png", BCSS)
        # float16 storage can break near-ties differently; the rest must agree exactly
        assert (mask == lut[scores.argmax(axis=0)]).mean() > 0.995
    assert json.loads((tmp_path / "refine.json").read_text())["crf"] is False


def test_no_tta(tiny_run, tmp_path):
    result = tiny_run.refine(tmp_path, tta=False, crf=False)
    assert result.n_written == 4
    meta = json.loads((tmp_path / "refine.json").read_text())
    assert meta["tta"] is False and meta["n_variants"] == 1
    for s in list_split(tiny_run.data, "test", BCSS):
        read_mask(tmp_path / f"{s.image_id}.png", BCSS, shape=(224, 224))


def test_crf_pool_matches_inline(tiny_run, test_out, tmp_path):
    inline, _ = test_out
    result = tiny_run.refine(tmp_path, workers=2, batch_size=3, save_scores=True)
    assert result.n_written == 4
    for s in list_split(tiny_run.data, "test", BCSS):
        a = read_mask(inline / f"{s.image_id}.png", BCSS)
        b = read_mask(tmp_path / f"{s.image_id}.png", BCSS)
        assert (a == b).mean() > 0.999  # batch composition may move the scores by rounding only


# ------------------------------------------------------------------------------------------ gating

def test_labels_gate_on_train_uses_file_name_labels(tiny_run, tmp_path):
    result = tiny_run.refine(tmp_path, split="train", crf=False, tta=False)
    assert result.gate == "labels" and result.n_written == 12
    for s in list_split(tiny_run.data, "train", BCSS):
        labelled = {c.mask_index for c, on in zip(BCSS.classes, s.labels) if on}
        mask = present(read_mask(tmp_path / f"{s.image_id}.png", BCSS))
        assert mask <= labelled | {BG} and mask & labelled  # the labelled classes only, and not none of them


def test_gate_none_and_pred_on_an_image_folder(tiny_run, tmp_path):
    images = tmp_path / "tiles"
    images.mkdir()
    for s in list_split(tiny_run.data, "test", BCSS):
        shutil.copy(s.image_path, images / s.image_path.name)
    result = tiny_run.refine(tmp_path / "pred", images=images, crf=False, tta=False)
    assert result.gate == "pred" and result.n_written == 4
    meta = json.loads((tmp_path / "pred" / "refine.json").read_text())
    assert meta["images"] == str(images.resolve()) and meta["split"] is None
    assert meta["settings"]["pred_threshold"] == 0.5
    result = tiny_run.refine(tmp_path / "none", gate="none", crf=False, tta=False)
    assert result.gate == "none" and result.n_written == 4


def test_gates_the_source_cannot_feed_are_refused(tiny_run, tmp_path):
    with pytest.raises(ConstructError, match="--gate gt needs ground-truth masks"):
        tiny_run.refine(tmp_path, split="train", gate="gt")
    with pytest.raises(ConstructError, match="--gate labels needs labels in the file names"):
        tiny_run.refine(tmp_path, split="test", gate="labels")
    assert not (tmp_path / "refine.json").exists()


def test_predicted_gate_thresholds_and_keeps_the_best_class(tiny_run):
    from construct.head.io import load_head

    head, _ = load_head(tiny_run.run)
    # two images x 2 variants; image 0: classes 0 and 2 confidently present; image 1: nothing above 0.5
    logit = torch.tensor([[4.0, -4.0, 3.0, -4.0], [4.0, -4.0, 3.0, -4.0],
                          [-3.0, -1.0, -2.0, -4.0], [-3.0, -0.5, -2.0, -4.0]])
    out = HeadOutput(features={}, logits={k: logit for k in head.config.cam_levels})
    gate = predicted_gate(head, out, n_variants=2, threshold=0.5)
    assert gate.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0]]


def test_default_output_folder(tiny_run):
    cfg = RefineConfig(run=tiny_run.run, data=tiny_run.data, split="valid")
    assert cfg.out_path == tiny_run.run / "predictions" / "valid"


# ------------------------------------------------------------------------------------------ resumption

def test_resume_skips_finished_tiles(tiny_run, tmp_path):
    first = tiny_run.refine(tmp_path, crf=False, tta=False)
    assert first.n_written == 4
    pngs = sorted(tmp_path.glob("*.png"))
    pngs[1].unlink()
    stamps = {p.name: p.stat().st_mtime_ns for p in pngs if p.exists()}
    second = tiny_run.refine(tmp_path, crf=False, tta=False)
    assert (second.n_written, second.n_skipped) == (1, 3)
    assert pngs[1].exists()
    assert {p: (tmp_path / p).stat().st_mtime_ns for p in stamps} == stamps  # untouched
    # Nothing left to do: no backbone is even built.
    third = refine(tiny_run.config(tmp_path, crf=False, tta=False), conch=None, progress=False)
    assert (third.n_written, third.n_skipped) == (0, 4)
    assert json.loads((tmp_path / "refine.json").read_text())["complete"] is True


def test_resume_with_other_settings_is_refused(tiny_run, tmp_path):
    tiny_run.refine(tmp_path, crf=False, tta=False)
    with pytest.raises(ConstructError, match=r"other settings \(tta differ\)"):
        tiny_run.refine(tmp_path, crf=False, tta=True)
    with pytest.raises(ConstructError, match=r"other settings \(crf, gate differ\)"):
        tiny_run.refine(tmp_path, crf=True, tta=False, gate="none")


def test_foreign_pngs_are_not_overwritten(tiny_run, tmp_path):
    stem = list_split(tiny_run.data, "test", BCSS)[0].image_id
    (tmp_path / f"{stem}.png").write_bytes(b"someone else's file")
    with pytest.raises(ConstructError, match="not written by `construct refine`"):
        tiny_run.refine(tmp_path, crf=False, tta=False)
