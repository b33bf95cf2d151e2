"""Tissue detection ignores scanner edges, pen ink and tinted glass, and keeps pale tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from construct.slide.reader import open_slide
from construct.slide.synthetic import (
    ARTEFACT_COLORS,
    DEFAULT_LAYOUT,
    artefact_mask,
    layout_regions,
    paint,
    render,
    write_pyramid_tiff,
)
from construct.slide.tissue import slide_tissue, tissue_preview

from .test_real_slide import SLIDE as CMU

MPP, CELL = 2.0, 128  # 1024 px = 2 mm a side; 256 µm layout cells, the outer ring glass
EDGE_UM, INK_UM, TINT_UM = 160, 80, 200


def _detect(image: np.ndarray, path: Path, mpp: float, threshold: float | None = None):
    """Write `image` as a pyramidal slide, read its thumbnail back as `construct slide` does, detect."""
    write_pyramid_tiff(path, image, mpp)
    slide = open_slide(path)
    try:
        return slide_tissue(slide, threshold)
    finally:
        slide.close()


def _at_mask(level0: np.ndarray, downsample: float) -> np.ndarray:
    step = int(downsample)
    return level0[step // 2::step, step // 2::step]


@pytest.mark.parametrize("kind", list(ARTEFACT_COLORS))
def test_artefacts_over_glass_are_not_tissue(kind, tmp_path):
    regions = layout_regions(DEFAULT_LAYOUT, CELL)
    image = render(regions)
    width = {"black-edge": EDGE_UM, "grey-edge": EDGE_UM, "tinted-glass": TINT_UM}.get(kind, INK_UM) / MPP
    where = artefact_mask(kind, regions.shape, round(width), where=(0.5 / len(DEFAULT_LAYOUT), 1.0))
    assert not (where & (regions != 4)).any()  # over the glass ring only
    paint(image, where, kind)
    tissue = _detect(image, tmp_path / f"{kind}.tif", MPP)
    artefact = _at_mask(where, tissue.downsample)
    truth = _at_mask(regions, tissue.downsample) != 4
    assert (tissue.mask & artefact).sum() / artefact.sum() < 0.01, kind
    assert (tissue.mask & truth).sum() / (tissue.mask | truth).sum() > 0.97, kind


def test_pale_tissue_touching_tissue_is_kept(tmp_path):
    layout = ("44444444",) + ("41111114",) * 3 + ("45555554",) * 3 + ("44444444",)  # 5: pale, painted below
    regions = layout_regions(layout, CELL)
    image = render(regions)
    pale = regions == 5
    rows = np.nonzero(pale.any(axis=1))[0]
    necrosis, fat = pale.copy(), pale.copy()
    necrosis[rows[len(rows) // 2]:] = False
    fat[:rows[len(rows) // 2]] = False
    rng = np.random.default_rng(1)
    for where, rgb in ((necrosis, (226, 192, 214)), (fat, (236, 219, 232))):
        image[where] = np.clip(np.array(rgb) + rng.normal(0, 4, (int(where.sum()), 3)), 0, 255)
    tissue = _detect(image, tmp_path / "pale.tif", MPP)
    for where in (necrosis, fat):
        assert tissue.mask[_at_mask(where, tissue.downsample)].mean() > 0.95


def test_threshold_moves_the_cut_but_artefacts_stay_out(tmp_path):
    regions = layout_regions(DEFAULT_LAYOUT, CELL)
    image = render(regions)
    ink = artefact_mask("blue-ink", regions.shape, round(INK_UM / MPP), where=(0.5 / len(DEFAULT_LAYOUT), 1.0))
    paint(image, ink, "blue-ink")
    low = _detect(image, tmp_path / "ink.tif", MPP, threshold=0.0)
    assert not (low.mask & _at_mask(ink, low.downsample)).any()
    assert not _detect(image, tmp_path / "ink.tif", MPP, threshold=0.9).any  # no H&E is that saturated


def test_tissue_png_shows_what_was_kept(tmp_path):
    regions = layout_regions(DEFAULT_LAYOUT, CELL)
    image = render(regions)
    ink = artefact_mask("green-ink", regions.shape, round(INK_UM / MPP), where=(0.5 / len(DEFAULT_LAYOUT), 1.0))
    paint(image, ink, "green-ink")
    tissue = _detect(image, tmp_path / "ink.tif", MPP)
    preview = np.asarray(tissue_preview(tissue)).astype(int)
    assert preview.shape == (*tissue.mask.shape, 3)
    assert np.array_equal(preview[tissue.mask], tissue.image[tissue.mask])  # kept: as scanned
    stroke = _at_mask(ink, tissue.downsample) & ~tissue.mask
    assert (preview[stroke].min(axis=1) > tissue.image[stroke].min(axis=1)).all()  # not kept: faded


@pytest.mark.skipif(not CMU.is_file(), reason=f"real slide absent ({CMU}): see test_real_slide.py")
def test_real_slide_with_dark_edge_and_ink_keeps_its_tissue_area(tmp_path):
    slide = open_slide(CMU)
    w, h = slide.dimensions
    clean = slide.read(0, 0, w, h, w, h).copy()
    mpp = slide.mpp
    slide.close()
    dirty = clean.copy()
    paint(dirty, artefact_mask("black-edge", dirty.shape[:2], round(EDGE_UM / mpp)), "black-edge")
    for seed, (kind, row, reach) in enumerate((("blue-ink", 0.12, 0.5), ("green-ink", 0.62, 0.3),
                                               ("black-ink", 0.4, 0.35))):  # over glass, one across a strand
        paint(dirty, artefact_mask(kind, dirty.shape[:2], round(60 / mpp), where=(row, reach)), kind, seed)
    area = {name: _detect(image, tmp_path / f"{name}.tif", mpp).mask.sum() for name, image in
            (("clean", clean), ("dirty", dirty))}
    assert abs(area["dirty"] / area["clean"] - 1) < 0.05, area
