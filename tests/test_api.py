"""The Python API (`construct.load`): the same masks as the commands, through the same pipeline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

import construct
from construct.data.classes import BCSS
from construct.data.dataset import list_split, read_image, read_mask
from construct.errors import ConstructError
from construct.head.scores import mask_index_lut


@pytest.fixture(scope="module")
def tiles(tiny_run, tmp_path_factory):
    """A folder of the test split's tiles, without labels."""
    folder = tmp_path_factory.mktemp("tiles")
    for s in list_split(tiny_run.data, "test", BCSS):
        shutil.copy(s.image_path, folder / s.image_path.name)
    return folder


@pytest.fixture(scope="module")
def segmenter(tiny_run):
    return construct.load(tiny_run.run, tta=False, device="cpu")


def test_import_construct_loads_no_torch():
    code = "import sys, construct; assert construct.__version__; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_predict_gives_refines_mask_and_scores(segmenter, tiny_run, tiles, tmp_path):
    # gate pred, Dense CRF: the defaults; one tile is not normalised for stain (too little to estimate from)
    tiny_run.refine(tmp_path / "refine", images=tiles, tta=False, stain_norm="none")
    path = sorted(tiles.iterdir())[0]
    pred = segmenter.predict(path)
    assert np.array_equal(pred.mask, read_mask(tmp_path / "refine" / f"{path.stem}.png", BCSS))
    assert np.array_equal(segmenter.predict(read_image(path, segmenter.tile_size)).mask, pred.mask)
    size = segmenter.tile_size
    assert pred.mask.shape == (size, size) and pred.mask.dtype == np.uint8
    assert pred.scores.shape == (len(BCSS) + 1, size, size) and pred.scores.dtype == np.float32
    assert 0.0 <= pred.scores.min() and pred.scores.max() <= 1.0


def test_predict_with_the_classes_present_keeps_only_those(segmenter, tiles):
    path = sorted(tiles.iterdir())[0]
    assert BCSS.names[0] == "TUM"
    pred = segmenter.predict(path, present=["TUM"], crf=False)
    assert not pred.scores[1:len(BCSS)].any()  # every class but TUM gated out
    assert set(np.unique(pred.mask).tolist()) <= {BCSS.classes[0].mask_index, BCSS.background_index}


def test_predict_folder_writes_refines_pngs(segmenter, tiny_run, tiles, tmp_path):
    tiny_run.refine(tmp_path / "refine", images=tiles, tta=False, crf=False)
    result = segmenter.predict_folder(tiles, tmp_path / "api", crf=False, crf_workers=0, loader_workers=0,
                                      progress=False)
    assert result.n_written == 4 and result.gate == "pred"
    for p in sorted(tiles.iterdir()):
        assert np.array_equal(read_mask(tmp_path / "api" / f"{p.stem}.png", BCSS),
                              read_mask(tmp_path / "refine" / f"{p.stem}.png", BCSS))
    api_meta = json.loads((tmp_path / "api" / "refine.json").read_text())
    cmd_meta = json.loads((tmp_path / "refine" / "refine.json").read_text())
    assert api_meta["settings"] == cmd_meta["settings"]


def test_a_student_run_predicts_by_argmax(student_run, tiles):
    seg = construct.load(student_run.run, device="cpu")
    assert seg.kind == "student" and seg.mpp == 0.25
    pred = seg.predict(sorted(tiles.iterdir())[0], gate="none")
    assert np.array_equal(pred.mask, mask_index_lut(BCSS)[pred.scores.argmax(axis=0)])


def test_mistakes_are_one_line(segmenter, tiles):
    size = segmenter.tile_size
    with pytest.raises(ConstructError, match=rf"expected a \({size}, {size}, 3\) uint8"):
        segmenter.predict(np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ConstructError, match="NOPE not in the run's classes"):
        segmenter.predict(sorted(tiles.iterdir())[0], present=["NOPE"])
    with pytest.raises(ConstructError, match="gate 'gt'"):
        segmenter.predict(sorted(tiles.iterdir())[0], gate="gt")
    with pytest.raises(ConstructError, match="not a construct run"):
        construct.load(tiles)
