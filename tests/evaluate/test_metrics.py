"""Metrics against confusion matrices worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from construct.data.classes import BCSS
from construct.metrics import apply_protocol, confusion_matrix, scores

N = BCSS.n_mask_values
BG = BCSS.background_index


def conf_of(gt: list[int], pred: list[int]) -> np.ndarray:
    return confusion_matrix(np.array(gt), np.array(pred), N)


def test_confusion_rows_are_ground_truth_columns_prediction():
    conf = conf_of([0, 0, 1, 4], [0, 1, 1, 0])
    expected = np.zeros((N, N), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[4, 0] = 1
    np.testing.assert_array_equal(conf, expected)


def test_bcss_protocol_counts_foreground_on_background_as_false_positive():
    # TUM: TP 1, row 2, col 2 (one from background) -> IoU 1/3, Dice 1/2.
    # STR: TP 1, row 1, col 2 -> IoU 1/2, Dice 2/3. LYM, NEC absent -> undefined.
    s = scores(apply_protocol(conf_of([0, 0, 1, 4], [0, 1, 1, 0]), "bcss", BG), BCSS)
    assert s.iou[0] == pytest.approx(100 / 3)
    assert s.dice[0] == pytest.approx(50)
    assert s.iou[1] == pytest.approx(50)
    assert s.dice[1] == pytest.approx(200 / 3)
    assert math.isnan(s.iou[2]) and math.isnan(s.iou[3])
    assert s.iou[BG] == 0
    assert s.miou == pytest.approx((100 / 3 + 50) / 2)  # empty classes left out of the mean
    assert s.mdice == pytest.approx((50 + 200 / 3) / 2)
    assert s.fwiou == pytest.approx((2 * 100 / 3 + 1 * 50 + 1 * 0) / 4)
    assert s.pixel_accuracy == pytest.approx(50)


def test_ignore_background_drops_ground_truth_background_pixels():
    conf = apply_protocol(conf_of([0, 0, 1, 4], [0, 1, 1, 0]), "ignore-background", BG)
    assert conf[BG].sum() == 0
    s = scores(conf, BCSS)
    # TUM: TP 1, row 2, col 1 -> IoU 1/2, Dice 2/3; STR unchanged.
    assert s.iou[0] == pytest.approx(50)
    assert s.dice[0] == pytest.approx(200 / 3)
    assert math.isnan(s.iou[BG])
    assert s.miou == pytest.approx(50)
    assert s.fwiou == pytest.approx(50)
    assert s.pixel_accuracy == pytest.approx(200 / 3)


def test_ignore_background_keeps_background_predicted_on_tissue_as_error():
    s = scores(apply_protocol(conf_of([0, 0], [4, 0]), "ignore-background", BG), BCSS)
    assert s.iou[0] == pytest.approx(50)
    assert s.iou[BG] == 0
    assert s.pixel_accuracy == pytest.approx(50)


def test_protocols_differ_only_through_background_ground_truth():
    conf = conf_of([0, 1, 2, 3], [0, 1, 2, 3])
    a, b = (scores(apply_protocol(conf, p, BG), BCSS) for p in ("bcss", "ignore-background"))
    assert a.miou == b.miou == 100


def test_all_background_image():
    conf = conf_of([4, 4, 4, 4], [4, 4, 4, 4])
    s = scores(apply_protocol(conf, "bcss", BG), BCSS)
    assert math.isnan(s.miou) and math.isnan(s.mdice)  # no tissue anywhere: undefined, not 0 or 100
    assert s.fwiou == 100 and s.pixel_accuracy == 100
    ignored = scores(apply_protocol(conf, "ignore-background", BG), BCSS)
    assert all(math.isnan(v) for v in (ignored.miou, ignored.fwiou, ignored.pixel_accuracy))


def test_false_positive_on_all_background_image_scores_zero_under_bcss_only():
    conf = conf_of([4, 4], [4, 0])
    assert scores(apply_protocol(conf, "bcss", BG), BCSS).miou == 0
    assert math.isnan(scores(apply_protocol(conf, "ignore-background", BG), BCSS).miou)


def test_unknown_protocol_rejected():
    with pytest.raises(ValueError):
        apply_protocol(np.zeros((N, N)), "mean-of-images", BG)
