"""The trivial baselines: exact confusion counts on hand-made masks, and their place in eval's output."""

import numpy as np
import pytest

from construct.data.classes import BCSS
from construct.evaluate.baselines import baseline_confusions
from construct.evaluate.run import evaluate_predictions
from construct.evaluate.table import format_table

from .conftest import make_dataset

TUM, STR, LYM, NEC, BG = 0, 1, 2, 3, 4


def test_all_background_puts_every_pixel_in_the_background_column():
    gt = np.array([[TUM, TUM], [STR, BG]])
    conf = baseline_confusions(gt, BCSS)["all-background"]
    assert conf[:, BG].tolist() == [2, 1, 0, 0, 1]
    assert conf.sum() == conf[:, BG].sum() == 4


def test_labelled_everywhere_splits_each_pixel_over_the_tile_labels():
    gt = np.array([[TUM, TUM, TUM], [STR, BG, BG]])
    conf = baseline_confusions(gt, BCSS)["labelled-everywhere"]
    # Labels {TUM, STR}: each pixel counts half to each, background pixels included.
    assert conf[TUM, TUM] == conf[TUM, STR] == 1.5
    assert conf[STR, TUM] == conf[STR, STR] == 0.5
    assert conf[BG, TUM] == conf[BG, STR] == 1.0
    assert conf.sum() == gt.size and conf[:, BG].sum() == 0


def test_labelled_everywhere_without_tissue_predicts_background():
    conf = baseline_confusions(np.full((2, 2), BG), BCSS)["labelled-everywhere"]
    assert conf[BG, BG] == 4 and conf.sum() == 4


def test_single_label_tiles_score_exactly(tmp_path):
    gts = {"a": np.array([[TUM, TUM], [TUM, BG]]), "b": np.array([[LYM, LYM], [LYM, LYM]])}
    data, preds = make_dataset(tmp_path, gts, gts)
    result = evaluate_predictions(preds, data, "test", baselines=True, progress=False)
    lab = result["baselines"]["labelled-everywhere"]
    assert lab["IoU"]["TUM"] == pytest.approx(75.0)  # 3 TP, 1 background pixel predicted TUM
    assert lab["IoU"]["LYM"] == pytest.approx(100.0)
    assert lab["IoU"]["STR"] is None  # neither in ground truth nor predicted
    assert lab["mIoU"] == pytest.approx(87.5)
    assert result["baselines"]["all-background"]["mIoU"] == 0.0
    assert result["mIoU"] == 100.0
    text = format_table(result)
    assert "baseline: all-background" in text and "baseline: labelled-everywhere" in text


def test_no_baselines_unless_asked(tmp_path):
    gts = {"a": np.array([[TUM, BG]])}
    data, preds = make_dataset(tmp_path, gts, gts)
    assert "baselines" not in evaluate_predictions(preds, data, "test", progress=False)
