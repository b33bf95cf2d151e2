"""Bad input gives one clear ConstructError line: missing or foreign runs, other weights, bad images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from construct.data.classes import BCSS
from construct.data.dataset import list_split
from construct.errors import ConstructError
from construct.refine import RefineConfig, refine


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_missing_run(tiny_run, tmp_path):
    with pytest.raises(ConstructError, match="not a construct run") as e:
        refine(RefineConfig(run=tmp_path / "nope", data=tiny_run.data, split="test"), progress=False)
    one_line(e)


def test_run_from_another_version(tiny_run, tmp_path):
    run = tiny_run.copy_run(tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    meta["format_version"] = 99
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConstructError, match="run format version 99") as e:
        tiny_run.refine(tmp_path / "out", run=run)
    one_line(e)


def test_backbone_fingerprint_mismatch(tiny_run, tmp_path):
    run = tiny_run.copy_run(tmp_path / "run")
    meta = json.loads((run / "config.json").read_text())
    stored = meta["backbones"]["conch"]["fingerprint"]
    meta["backbones"]["conch"]["fingerprint"] = "f00d" * 16
    (run / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ConstructError) as e:
        tiny_run.refine(tmp_path / "out", run=run)
    msg = one_line(e)
    assert msg.startswith("conch:") and stored[:12] in msg and "f00df00df00d" in msg
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_unreadable_image_names_the_file_and_keeps_earlier_masks(tiny_run, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_run.data / "test", data / "test")
    bad = list_split(data, "test", BCSS)[2].image_path
    bad.write_bytes(b"not an image")
    with pytest.raises(ConstructError) as e:
        tiny_run.refine(tmp_path / "out", data=data, batch_size=1, crf=False, tta=False)
    msg = one_line(e)
    assert msg.startswith(str(bad)) and "re-run" in msg
    assert len(list((tmp_path / "out").glob("*.png"))) == 2
    assert json.loads((tmp_path / "out" / "refine.json").read_text())["complete"] is False


def test_image_of_the_wrong_size(tiny_run, tmp_path):
    images = tmp_path / "tiles"
    images.mkdir()
    Image.fromarray(np.zeros((80, 100, 3), np.uint8)).save(images / "small.png")
    with pytest.raises(ConstructError, match=r"small\.png: expected 224x224 pixels, found 100x80") as e:
        tiny_run.refine(tmp_path / "out", images=images, crf=False, tta=False)
    one_line(e)


@pytest.mark.parametrize("kw, match", [
    (dict(images="x"), "either --data"),
    (dict(data=None), "either --data"),
    (dict(split="val"), "--split val"),
    (dict(gate="maybe"), "--gate maybe"),
    (dict(batch_size=0), "--batch-size"),
    (dict(pred_threshold=1.5), "--pred-threshold"),
])
def test_bad_settings(tiny_run, tmp_path, kw, match):
    cfg = RefineConfig(**{**dict(run=tiny_run.run, data=tiny_run.data, split="test", out=tmp_path), **kw})
    with pytest.raises(ConstructError, match=match):
        refine(cfg, conch=tiny_run.conch, progress=False)
