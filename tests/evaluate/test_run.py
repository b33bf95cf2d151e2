"""evaluate_predictions end to end on tiny PNG data sets: metrics, JSON file, bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from construct.data.classes import BCSS
from construct.errors import ConstructError
from construct.evaluate import evaluate_predictions, format_table

JSON_KEYS = {
    "protocol", "split", "n_images", "classes", "mIoU", "mDice", "FwIoU", "pixel_accuracy", "IoU", "Dice",
    "confusion", "n_missing", "missing", "extra", "random_weights", "synthetic", "stain",
}


def run(data, preds, **kw):
    return evaluate_predictions(preds, data, "test", progress=False, **kw)


def test_one_matrix_over_all_images_bcss(three_tiles):
    r = run(*three_tiles)
    # Summed matrix: TUM 8/8 (+1 FP on background), STR 8/8, LYM 8/8 (+8 NEC predicted as LYM),
    # NEC 0/8, background 15/16. Averaging per image would give 41.67 mIoU instead.
    assert r["IoU"] == pytest.approx({"TUM": 800 / 9, "STR": 100, "LYM": 50, "NEC": 0})
    assert r["Dice"]["TUM"] == pytest.approx(1600 / 17)
    assert r["mIoU"] == pytest.approx((800 / 9 + 100 + 50 + 0) / 4)
    assert r["FwIoU"] == pytest.approx((8 * 800 / 9 + 8 * 100 + 8 * 50 + 16 * 1500 / 16) / 48)
    assert r["pixel_accuracy"] == pytest.approx(100 * 39 / 48)
    assert r["n_images"] == 3
    assert np.array(r["confusion"]).sum() == 48


def test_ignore_background_protocol(three_tiles):
    r = run(*three_tiles, protocol="ignore-background")
    assert r["IoU"]["TUM"] == pytest.approx(100)  # the false positive sat on background
    assert r["mIoU"] == pytest.approx(62.5)
    assert r["pixel_accuracy"] == pytest.approx(75)
    assert sum(r["confusion"][BCSS.background_index]) == 0


def test_json_file_schema(three_tiles, tmp_path):
    out = tmp_path / "out" / "metrics.json"
    r = run(*three_tiles, json_path=out)
    saved = json.loads(out.read_text())
    assert saved == r
    assert set(saved) == JSON_KEYS
    assert saved["classes"] == ["TUM", "STR", "LYM", "NEC"]
    assert set(saved["IoU"]) == set(saved["Dice"]) == set(BCSS.names)
    assert (saved["protocol"], saved["split"]) == ("bcss", "test")
    n = BCSS.n_mask_values
    assert len(saved["confusion"]) == n and all(len(row) == n and all(isinstance(v, int) for v in row)
                                                 for row in saved["confusion"])
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left nothing behind


def test_empty_class_is_null_and_left_out_of_the_mean(dataset, tmp_path):
    gt = np.array([[0, 0, 1, 1]])
    data, preds = dataset({"a": gt}, {"a": gt})
    out = tmp_path / "m.json"
    r = run(data, preds, json_path=out)
    assert r["IoU"]["LYM"] is None and r["Dice"]["NEC"] is None
    assert r["mIoU"] == 100
    assert json.loads(out.read_text())["IoU"]["LYM"] is None  # null, not NaN


def test_all_background_split_has_undefined_mean(dataset, tmp_path):
    bg = np.full((3, 3), BCSS.background_index)
    data, preds = dataset({"a": bg}, {"a": bg})
    r = run(data, preds, json_path=tmp_path / "m.json")
    assert r["mIoU"] is None and r["FwIoU"] == 100
    assert "ours" in format_table(r)


def test_missing_prediction_is_an_error_naming_the_file(three_tiles):
    data, preds = three_tiles
    (preds / "b.png").unlink()
    with pytest.raises(ConstructError, match=r"b\.png") as e:
        run(data, preds)
    assert "\n" not in str(e.value)


def test_allow_missing_counts_and_reports(three_tiles):
    data, preds = three_tiles
    (preds / "b.png").unlink()
    r = run(data, preds, allow_missing=True)
    assert (r["n_missing"], r["missing"], r["n_images"]) == (1, ["b.png"], 2)
    assert "b.png" in format_table(r)


def test_no_predictions_at_all_is_an_error_even_when_allowed(three_tiles):
    data, preds = three_tiles
    for p in preds.glob("*.png"):
        p.unlink()
    with pytest.raises(ConstructError, match="no predictions"):
        run(data, preds, allow_missing=True)


def test_extra_predictions_are_reported_not_fatal(three_tiles):
    data, preds = three_tiles
    Image.new("L", (4, 4)).save(preds / "stray.png")
    (preds / "refine.json").write_text(json.dumps({"random_weights": False, "backbones": {}}))
    r = run(data, preds)
    assert r["extra"] == ["stray.png"]  # refine.json is metadata, not an extra prediction
    assert "stray.png" in format_table(r)


def test_size_mismatch_names_the_prediction(three_tiles):
    data, preds = three_tiles
    Image.new("L", (5, 4)).save(preds / "a.png")
    with pytest.raises(ConstructError, match=r"preds/a\.png"):
        run(data, preds)


def test_invalid_index_names_the_prediction(three_tiles):
    data, preds = three_tiles
    bad = np.zeros((4, 4), dtype=np.uint8)
    bad[1, 1] = 7
    Image.fromarray(bad, mode="L").save(preds / "c.png")
    with pytest.raises(ConstructError, match=r"preds/c\.png.*7"):
        run(data, preds)


def test_rgb_prediction_rejected(three_tiles):
    data, preds = three_tiles
    Image.new("RGB", (4, 4)).save(preds / "a.png")
    with pytest.raises(ConstructError, match=r"a\.png"):
        run(data, preds)


def test_empty_split_is_an_error(tmp_path):
    (tmp_path / "data" / "test" / "img").mkdir(parents=True)
    (tmp_path / "data" / "test" / "mask").mkdir()
    (tmp_path / "preds").mkdir()
    with pytest.raises(ConstructError):
        run(tmp_path / "data", tmp_path / "preds")


def test_missing_prediction_folder(three_tiles, tmp_path):
    with pytest.raises(ConstructError, match="nowhere"):
        run(three_tiles[0], tmp_path / "nowhere")


def test_unknown_protocol(three_tiles):
    with pytest.raises(ConstructError, match="protocol"):
        run(*three_tiles, protocol="per-image")


def test_provenance_flags_mark_our_row(dataset, tmp_path):
    gt = np.array([[0, 1, 2, 3]])
    data, preds = dataset({"a": gt}, {"a": gt}, random_weights=True, synthetic=True)
    r = run(data, preds)
    assert (r["random_weights"], r["synthetic"]) == (True, True)
    assert "ours (random backbones, synthetic data)" in format_table(r)


def test_provenance_unknown_without_metadata(three_tiles):
    r = run(*three_tiles)
    assert (r["random_weights"], r["synthetic"]) == (None, None)


def test_corrupt_provenance_file_is_an_error(three_tiles):
    data, preds = three_tiles
    (preds / "refine.json").write_text("{not json")
    with pytest.raises(ConstructError, match="refine.json"):
        run(data, preds)


def test_gallery_run_that_is_not_a_run_is_an_error(three_tiles, tmp_path):
    data, preds = three_tiles
    with pytest.raises(ConstructError, match="not a construct run"):
        run(data, preds, report_path=tmp_path / "r.html", features=tmp_path / "store", run=tmp_path / "nope")
    assert not (tmp_path / "r.html").exists()
