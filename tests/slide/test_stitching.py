"""Tiling, the blending window, block stitching in bounded memory."""

from __future__ import annotations

import numpy as np
import pytest

from construct.errors import ConstructError
from construct.slide.grid import Grid, blend_window, make_grid
from construct.slide.stitch import Stitcher
from construct.slide.tissue import TissueMask


def test_grid_covers_every_pixel_and_keeps_tissue_tiles_only():
    g = Grid(scale=2.0, width=1000, height=600, tile=224, overlap=56)
    xs = g.starts(g.width)
    assert xs[0] == 0 and xs[-1] == 1000 - 224 and all(b - a <= 168 for a, b in zip(xs, xs[1:]))
    covered = np.zeros(1000, bool)
    for x in xs:
        covered[x:x + 224] = True
    assert covered.all()
    mask = np.zeros((75, 125), bool)  # 16 level-0 px per mask px = 8 grid px
    mask[10:20, 10:20] = True  # grid px 80..160
    origins = g.tissue_tiles(TissueMask(mask, 16.0, 0.1))
    assert origins and all(x <= 160 and y <= 160 for x, y in origins)
    assert len(origins) == len({(x, y) for x in xs for y in g.starts(600) if x < 160 and y < 160})


def test_slide_smaller_than_a_tile_is_one_padded_tile(tmp_path):
    g = make_grid((400, 3000), 0.5, 1.0, 224, 56)  # 200 x 1500 grid px: narrower than a tile
    assert (g.width, g.height) == (200, 1500) and g.starts(g.width) == [0] and len(g.starts(g.height)) > 1
    with pytest.raises(ConstructError, match="--overlap"):
        make_grid((4000, 3000), 0.5, 1.0, 224, 224)
    # The tile's scores are cropped to the grid.
    scores = np.random.default_rng(0).random((3, 224, 224)).astype(np.float32)
    stitcher = Stitcher(tmp_path, 3, 100, 150, 224, [(0, 0)], lambda o, acc: acc.argmax(0).astype(np.uint8),
                        fill=9, block=64)
    stitcher.add(0, 0, scores)
    stitcher.close()
    assert np.array_equal(stitcher.labels[:], scores[:, :100, :150].argmax(0))


def test_window_is_smooth_positive_and_flat_inside():
    w = blend_window(224, 56)
    assert w.min() > 0 and w[56:168, 56:168].min() == 1.0
    assert np.abs(np.diff(w[112])).max() < 0.05  # no jumps: seams cannot appear
    assert np.allclose(w, w.T) and np.allclose(w, w[::-1, ::-1])


def _stitch(tmp_path, origins, tiles, max_blocks, block=64):
    h = w = 300
    out = np.zeros((h, w), np.uint8)
    def finish(origin, acc):
        return np.where(acc.sum(0) > 0, acc.argmax(0), 9).astype(np.uint8)

    s = Stitcher(tmp_path, 3, h, w, 96, origins, finish, fill=9, block=block, max_blocks=max_blocks)
    for (x, y), t in zip(origins, tiles):
        s.add(x, y, t)
    s.close()
    out[:] = s.labels[:]
    return out, s


def test_stitching_equals_direct_sum_whatever_the_memory(tmp_path):
    rng = np.random.default_rng(0)
    g = Grid(1.0, 300, 300, 96, 24)
    origins = [(x, y) for x in g.starts(300) for y in g.starts(300)][:-3]  # a corner without tiles
    tiles = [rng.random((3, 96, 96), np.float32) for _ in origins]
    direct = np.zeros((3, 300, 300), np.float32)
    for (x, y), t in zip(origins, tiles):
        direct[:, y:y + 96, x:x + 96] += t
    expected = direct.argmax(0).astype(np.uint8)
    untouched = direct.sum(0) == 0
    expected[untouched] = 9
    roomy, a = _stitch(tmp_path / "a", origins, tiles, max_blocks=1000)
    tight, b = _stitch(tmp_path / "b", origins, tiles, max_blocks=3)
    assert np.array_equal(roomy, expected) and np.array_equal(tight, expected)
    assert b.peak_open <= 3 < a.peak_open and b.spilled == set() and not b.open
