"""Polygons from a label image: traced in strips at a coarse resolution, small pieces dropped, holes kept,
and annotations.geojson written compact, in QuPath's frame."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from construct.data.classes import BCSS
from construct.slide.outputs import qupath_offset, vector_factor, write_geojson
from construct.slide.vectorize import majority, trace


def _traced(labels, values, factor=1, min_area=0.0, rows=16):
    out: dict[int, list] = {v: [] for v in values}
    trace(labels, values, factor, min_area, lambda v, p: out[v].append(p), rows=rows)
    return out


def test_regions_keep_their_holes_and_join_across_strips():
    labels = np.zeros((50, 60), np.uint8)
    labels[5:45, 5:55] = 1
    labels[20:30, 20:30] = 0  # a hole
    labels[0:3, 57:60] = 1  # a second region
    labels[10:40, 30:33] = 0  # splits the top into two arms that join only below, several strips down
    got = _traced(labels, [0, 1])
    ones = sorted(got[1], key=lambda p: p.area)
    assert len(ones) == 2 and all(p.is_valid for p in ones)
    assert len(ones[1].interiors) == 1 and ones[0].area == 9
    assert sum(p.area for p in ones) == (labels == 1).sum()
    assert sum(p.area for p in got[0]) == (labels == 0).sum()


def test_majority_vote_is_the_most_frequent_label():
    block = np.array([[1, 1, 2, 3],
                      [1, 2, 3, 3],
                      [4, 4, 0, 0],
                      [4, 0, 0, 0],
                      [2, 2, 2, 2]], np.uint8)
    # The last row's cells are cut by the edge: they vote with the pixels they have.
    assert majority(block, 2).tolist() == [[1, 3], [4, 0], [2, 2]]


def test_speckle_votes_away_and_small_pieces_and_holes_are_dropped():
    rng = np.random.default_rng(0)
    labels = np.zeros((256, 256), np.uint8)
    labels[rng.random(labels.shape) < 0.005] = 1  # isolated speckle of class 1
    labels[100:108, 100:108] = 2  # 2x2 coarse px: under the minimum area
    labels[40:80, 40:80] = 3  # 10x10 coarse px: kept
    got = _traced(labels, [0, 1, 2, 3], factor=4, min_area=5.0)
    assert got[1] == [] and got[2] == []
    assert len(got[3]) == 1 and got[3][0].area == pytest.approx(100, rel=0.05)
    (glass,) = got[0]
    assert len(glass.interiors) == 1  # class 3's hole; class 2's speck is not one


def _geojson(tmp_path, labels, offset=(0.0, 0.0), scale=2.0, factor=1):
    path = tmp_path / "a.geojson"
    counts = write_geojson(path, labels, BCSS, scale, factor, offset, 0.0, tmp_path / "parts")
    return path, counts


def test_geojson_is_compact_qupath_and_in_its_frame(tmp_path):
    labels = np.full((64, 64), BCSS.background_index, np.uint8)
    labels[8:24, 8:24] = 0  # TUM: one region
    labels[40:48, 8:16] = 1  # STR: two regions
    labels[40:48, 40:56] = 1
    path, counts = _geojson(tmp_path, labels)
    text = path.read_text()
    assert text.count("\n") == 1 and ": " not in text  # compact, one line
    fc = json.loads(text)
    assert fc["type"] == "FeatureCollection" and counts == {"TUM": 1, "STR": 2, "LYM": 0, "NEC": 0}
    tum, stro = fc["features"]
    assert tum["geometry"]["type"] == "Polygon" and stro["geometry"]["type"] == "MultiPolygon"
    props = stro["properties"]
    assert props["objectType"] == "annotation" and props["classification"] == {"name": BCSS.classes[1].full_name,
                                                                              "color": list(BCSS.classes[1].color)}
    coords = shapely.get_coordinates(shape(tum["geometry"]))
    assert np.array_equal(coords, np.rint(coords))  # whole level-0 px
    assert shape(tum["geometry"]).bounds == (16, 16, 48, 48)  # label px x 2 level-0 px
    assert shape(stro["geometry"]).area == 4 * (labels == 1).sum()
    # A slide with bounds (MRXS): QuPath's frame starts at them.
    shifted, _ = _geojson(tmp_path, labels, offset=qupath_offset({"openslide.bounds-x": "1000",
                                                                 "openslide.bounds-y": "300"}))
    moved = json.loads(shifted.read_text())["features"][0]["geometry"]
    assert shape(moved).bounds == (16 - 1000, 16 - 300, 48 - 1000, 48 - 300)
    assert qupath_offset({}) == (0.0, 0.0)


def test_vector_resolution_is_never_finer_than_the_model():
    assert vector_factor(2.0, 0.25) == 8 and vector_factor(2.0, 0.5) == 4
    assert vector_factor(0.1, 0.25) == 1 and vector_factor(2.0, 3.0) == 1
