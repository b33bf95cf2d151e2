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


class _NecrosisUnclassified(ColourPredictor):
    """Scores necrosis as background: tissue that no class claims."""

    def __init__(self):
        super().__init__()
        nec, background = 3, len(BCSS)  # rows of `ref`: the classes in order, then background
        self.ref[[nec, background]] = self.ref[[background, nec]]


@pytest.fixture(scope="module")
def unclassified(synth_slide, tmp_path_factory):
    out = tmp_path_factory.mktemp("slide_unclassified")
    cfg = SlideConfig(out=out, target_mpp=MPP, batch_size=8, mask_values="qupath")
    result = segment_slides([synth_slide.path], cfg, _NecrosisUnclassified(), progress=False)
    assert not result.failed
    return out / synth_slide.path.stem, result.done[0]


def test_unclassified_tissue_makes_the_percentages_add_up(unclassified, synth_slide):
    folder, summary = unclassified
    px_mm2 = (0.5 / 1000) ** 2
    necrosis = (synth_slide.regions == 3).sum() * px_mm2
    assert summary["unclassified"]["area_mm2"] == pytest.approx(necrosis, rel=0.05)
    assert summary["classes"]["NEC"]["area_mm2"] < 0.05 * necrosis
    assert summary["unclassified"]["area_mm2"] == summary["background_in_tissue_mm2"]
    total = sum(c["percent_tissue"] for c in summary["classes"].values()) + summary["unclassified"]["percent_tissue"]
    assert total == pytest.approx(100, abs=0.01)
    row = next(csv.DictReader((folder.parent / "summary.csv").open()))
    assert float(row["unclassified_mm2"]) == summary["unclassified"]["area_mm2"]
    assert float(row["unclassified_percent_tissue"]) == summary["unclassified"]["percent_tissue"]


def test_legend_lists_unclassified_tissue():
    from construct.slide.outputs import overlay

    thumb = np.full((64, 400, 3), 255, np.uint8)
    labels = np.full((64, 400), 4, np.uint8)
    shares = {"TUM": 50.0, "STR": 20.0, "LYM": 10.0, "NEC": 5.0}
    without = np.asarray(overlay(thumb, labels, BCSS, shares))[64:]
    with_it = np.asarray(overlay(thumb, labels, BCSS, {**shares, "unclassified": 15.0}))[64:]
    assert (with_it < 255).any(axis=2).sum() > (without < 255).any(axis=2).sum()  # one more swatch and label


def test_qupath_mask_values_and_their_table(unclassified, segmented, synth_slide):
    folder, summary = unclassified
    assert summary["mask_values"] == "qupath"
    levels, _ = _mask(folder)
    truth = grid_truth(synth_slide.regions, 2.0, levels[0].shape)
    assert set(np.unique(levels[0])) <= {0, 1, 2, 3, 4}
    assert (levels[0][truth == 4] == 0).mean() > 0.99 and (levels[0][truth == 0] == 1).mean() > 0.95
    assert (levels[0][truth == 3] == 0).mean() > 0.95  # unclassified is background too
    table = list(csv.DictReader((folder / "mask_classes.csv").open()))
    assert [(int(r["value"]), r["class"]) for r in table] == [(0, "background"), (1, "TUM"), (2, "STR"), (3, "LYM"),
                                                               (4, "NEC")]
    assert [int(table[1][k]) for k in ("red", "green", "blue")] == list(BCSS.classes[0].color)
    # The default keeps the dataset's values, and says so too.
    default, _, _ = segmented
    table = list(csv.DictReader((default / "mask_classes.csv").open()))
    assert [(int(r["value"]), r["class"]) for r in table] == [(0, "TUM"), (1, "STR"), (2, "LYM"), (3, "NEC"),
                                                               (4, "background")]


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
