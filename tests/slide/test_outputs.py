"""A synthetic slide end to end with a colour-reading predictor: the outputs agree with the known regions."""

from __future__ import annotations

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import shapely
import shapely.affinity
import tifffile
from shapely.geometry import shape

from construct.data.classes import BCSS
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.synthetic import ColourPredictor

from .helpers import grid_truth

MPP = 1.0  # the fake model's resolution: the 0.5 µm/px slide is read at half size (1024 x 1024 grid)


@pytest.fixture(scope="module")
def segmented(synth_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("slide_out")
    predictor = ColourPredictor()
    cfg = SlideConfig(out=out, target_mpp=MPP, batch_size=8, meta={"model": {"fingerprint": predictor.fingerprint}})
    result = segment_slides([synth_slide.path], cfg, predictor, progress=False)
    assert not result.failed and len(result.done) == 1
    return out / synth_slide.path.stem, result.done[0], predictor


def _mask(folder):
    with tifffile.TiffFile(folder / "mask.ome.tif") as tif:
        series = tif.series[0]
        levels = [lvl.asarray() for lvl in series.levels]
        ome = ET.fromstring(tif.ome_metadata)
    pixels = next(e for e in ome.iter() if e.tag.endswith("Pixels"))
    return levels, pixels.attrib


def test_mask_matches_known_regions(segmented, synth_slide):
    folder, summary, predictor = segmented
    levels, pixels = _mask(folder)
    mask = levels[0]
    assert mask.shape == (1024, 1024) and mask.dtype == np.uint8
    assert [lvl.shape for lvl in levels] == [(1024, 1024), (512, 512)]
    assert float(pixels["PhysicalSizeX"]) == MPP and pixels["PhysicalSizeXUnit"] == "µm"
    truth = grid_truth(synth_slide.regions, 2.0, mask.shape)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, 4}
    # Away from region borders (a tile's width of slack: the tissue mask is coarse), every pixel agrees.
    from scipy import ndimage
    border = np.zeros_like(truth, bool)
    for v in range(5):
        border |= ndimage.binary_dilation(truth == v, iterations=8) & (truth != v)
    assert (mask == truth)[~border].mean() > 0.999
    assert (mask == truth).mean() > 0.98
    assert predictor.seen == summary["tiles"] > 0


def test_summary_areas_match_known_regions(segmented, synth_slide):
    folder, summary, _ = segmented
    on_disk = json.loads((folder / "summary.json").read_text())
    assert on_disk["tiles"] == summary["tiles"] and on_disk["mpp"] == MPP
    assert on_disk["model"]["fingerprint"] == "colour-predictor" and on_disk["seconds"] > 0
    px_mm2 = (0.5 / 1000) ** 2
    for c in BCSS.classes:
        known = (synth_slide.regions == c.mask_index).sum() * px_mm2
        assert on_disk["classes"][c.name]["area_mm2"] == pytest.approx(known, rel=0.05)
    assert on_disk["tissue_mm2"] == pytest.approx((synth_slide.regions != 4).sum() * px_mm2, rel=0.05)
    assert sum(c["percent_tissue"] for c in on_disk["classes"].values()) == pytest.approx(100, abs=1)
    rows = list(csv.DictReader((folder.parent / "summary.csv").open()))
    assert len(rows) == 1 and float(rows[0]["TUM_mm2"]) == on_disk["classes"]["TUM"]["area_mm2"]


def test_geojson_is_valid_and_matches_the_mask(segmented):
    folder, _, _ = segmented
    levels, _ = _mask(folder)
    collection = json.loads((folder / "annotations.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    names = []
    for feature in collection["features"]:
        props = feature["properties"]
        assert props["objectType"] == "annotation"
        c = next(c for c in BCSS.classes if c.full_name == props["classification"]["name"])
        assert props["classification"]["color"] == list(c.color)
        geom = shape(feature["geometry"])
        assert geom.is_valid and geom.geom_type in ("Polygon", "MultiPolygon")
        # Level-0 coordinates: two level-0 px per grid px. Traced at 2 µm/px and simplified within one traced
        # px, the outline may cut a 2 µm band's worth of corners off these 128 µm blocks: a few percent.
        assert geom.area / 4 == pytest.approx((levels[0] == c.mask_index).sum(), rel=0.03)
        names.append(c.name)
    assert names == ["TUM", "STR", "LYM", "NEC"]
    tumour = shape(collection["features"][0]["geometry"])
    biggest = max(getattr(tumour, "geoms", [tumour]), key=lambda p: p.area)
    assert shapely.get_num_interior_rings(biggest) >= 1  # the glass hole
    assert biggest.bounds == pytest.approx((256, 256, 1024, 1024), abs=40)


def test_overlay_and_tissue_mask_are_written(segmented):
    from PIL import Image

    folder, _, _ = segmented
    overlay = Image.open(folder / "overlay.png")
    assert overlay.width == 1024 and overlay.height > 1024  # thumbnail + legend
    assert np.asarray(Image.open(folder / "tissue.png")).any()
    assert not (folder.parent / ".work" / folder.name).exists()


def test_summary_records_seconds_by_phase(segmented):
    from construct.slide.phases import PHASES

    folder, _, _ = segmented
    on_disk = json.loads((folder / "summary.json").read_text())
    phases = on_disk["seconds_by_phase"]
    assert set(PHASES) <= set(phases) and all(v >= 0 for v in phases.values())
    assert phases["model"] > 0 and phases["vector"] > 0 and phases["write"] > 0 and phases["tissue"] > 0
    assert sum(phases.values()) == pytest.approx(on_disk["seconds"], abs=0.05)


class _BoundsHandle:
    """An OpenSlide handle that reports a scanned area starting at (BX, BY), as MRXS slides do."""

    def __init__(self, handle, bounds):
        self._handle = handle
        self.properties = {**handle.properties, "openslide.bounds-x": str(bounds[0]),
                           "openslide.bounds-y": str(bounds[1])}

    def __getattr__(self, name):
        return getattr(self._handle, name)


def test_geojson_lands_in_qupaths_frame_for_slides_with_bounds(segmented, synth_slide, tmp_path, monkeypatch):
    from construct.slide import run
    from construct.slide.reader import open_slide

    bounds = (1000, 300)

    def with_bounds(path, slide_mpp=None):
        slide = open_slide(path, slide_mpp)
        slide.handle = _BoundsHandle(slide.handle, bounds)
        return slide

    monkeypatch.setattr(run, "open_slide", with_bounds)
    result = segment_slides([synth_slide.path], SlideConfig(out=tmp_path, target_mpp=MPP, batch_size=8),
                            ColourPredictor(), progress=False)
    assert not result.failed
    folder, _, _ = segmented
    plain = json.loads((folder / "annotations.geojson").read_text())["features"]
    moved = json.loads((tmp_path / synth_slide.path.stem / "annotations.geojson").read_text())["features"]
    assert len(plain) == len(moved)
    for a, b in zip(plain, moved):
        assert shapely.equals(shapely.affinity.translate(shape(a["geometry"]), -bounds[0], -bounds[1]),
                              shape(b["geometry"]))
    assert result.done[0]["vector"]["qupath_offset"] == list(bounds)
