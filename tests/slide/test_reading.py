"""Synthetic slides open in OpenSlide with their resolution; tissue is found where the regions are."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from construct.errors import ConstructError
from construct.slide.reader import metadata_mpp, open_slide
from construct.slide.synthetic import make_synthetic_slide
from construct.slide.tissue import detect_tissue, otsu, tissue_downsample


def test_synthetic_slide_is_a_pyramid_with_resolution(synth_slide):
    slide = open_slide(synth_slide.path)
    try:
        assert slide.vendor == "generic-tiff" and slide.dimensions == (2048, 2048)
        assert slide.mpp == pytest.approx(0.5) and slide.mpp_source == "metadata"
        assert slide.handle.level_count == 4
        # A region read at half resolution has the colour of the region it comes from.
        patch = slide.read(1024 + 256, 256 + 256, 512, 512, 256, 256)
        assert patch.shape == (256, 256, 3)
        assert abs(patch.reshape(-1, 3).mean(0) - np.array([189, 134, 179])).max() < 3  # STR
    finally:
        slide.close()


def test_resolution_from_tiff_tags_or_flag(tmp_path):
    assert metadata_mpp({"tiff.ResolutionUnit": "centimeter", "tiff.XResolution": "40000"}) == pytest.approx(0.25)
    assert metadata_mpp({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "101600"}) == pytest.approx(0.25)
    assert metadata_mpp({"openslide.mpp-x": "0.2527", "tiff.XResolution": "1"}) == pytest.approx(0.2527)
    bare = make_synthetic_slide(tmp_path / "bare.tif", cell=32, mpp=None)
    with pytest.raises(ConstructError, match="records no resolution.*--slide-mpp"):
        open_slide(bare.path)
    slide = open_slide(bare.path, slide_mpp=0.5)
    assert slide.mpp == 0.5 and slide.mpp_source == "--slide-mpp"
    slide.close()


def test_tissue_follows_the_known_regions(synth_slide):
    slide = open_slide(synth_slide.path)
    d = tissue_downsample(slide.dimensions, slide.mpp)
    tissue = detect_tissue(slide.thumbnail(d), d, slide.mpp)
    slide.close()
    truth = synth_slide.regions[int(d / 2)::int(d), int(d / 2)::int(d)] != 4
    assert tissue.mask.shape == truth.shape
    iou = (tissue.mask & truth).sum() / (tissue.mask | truth).sum()
    assert iou > 0.97
    assert not tissue.mask[truth.shape[0] * 5 // 16, truth.shape[1] * 5 // 16]  # the glass hole stays a hole


def test_glass_has_no_tissue_and_threshold_overrides(tmp_path):
    glass = make_synthetic_slide(tmp_path / "glass.tif", cell=128, layout=("444", "444", "444"))
    slide = open_slide(glass.path)
    d = tissue_downsample(slide.dimensions, slide.mpp)
    thumb = slide.thumbnail(d)
    slide.close()
    assert not detect_tissue(thumb, d, 0.5).any
    assert not detect_tissue(thumb, d, 0.5, threshold=0.0).any  # near-white is glass whatever the cut


def test_otsu_splits_two_populations():
    values = np.concatenate([np.full(100, 0.02), np.full(60, 0.4)])
    assert 0.02 < otsu(values) <= 0.4


class _FlatHandle:
    """A slide without a pyramid (one level), 20,000 x 12,000 px of a horizontal gradient; records reads."""

    dimensions = (20000, 12000)
    level_downsamples = (1.0,)
    properties: ClassVar[dict] = {}

    def __init__(self):
        self.reads: list[tuple[int, int]] = []

    def get_best_level_for_downsample(self, downsample):
        return 0

    def read_region(self, location, level, size):
        from PIL import Image

        self.reads.append(size)
        x = (np.arange(location[0], location[0] + size[0]) * 255 // self.dimensions[0]).astype(np.uint8)
        rgba = np.empty((size[1], size[0], 4), np.uint8)
        rgba[..., :3] = x[None, :, None]
        rgba[..., 3] = 255
        return Image.fromarray(rgba, "RGBA")


def test_thumbnail_of_a_slide_without_pyramid_reads_bounded_regions(tmp_path):
    from construct.slide.reader import THUMB_READ_SIDE, Slide

    handle = _FlatHandle()
    thumb = Slide(tmp_path / "flat.tif", handle, 0.25, "metadata").thumbnail(100.0)
    assert thumb.shape == (120, 200, 3)
    assert max(w * h for w, h in handle.reads) <= THUMB_READ_SIDE ** 2  # never a whole strip of level 0
    expected = (np.arange(200) * 100 + 50) * 255 // 20000
    assert np.abs(thumb[60, :, 0].astype(int) - expected).max() <= 2
