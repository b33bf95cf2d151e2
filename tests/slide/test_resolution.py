"""Resolutions are checked, never guessed: the flag wins, implausible metadata is refused, doubts are reported."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from construct.errors import ConstructError
from construct.slide.reader import Slide, best_level, checked_resolution, open_slide
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.synthetic import ColourPredictor, make_synthetic_slide

SCREEN_MPP = 25400 / 72  # a TIFF tagged 72 dpi: 352.778 µm/px


def test_slide_mpp_beats_a_72_dpi_tag(tmp_path):
    tagged = make_synthetic_slide(tmp_path / "screen.tif", cell=32, mpp=SCREEN_MPP)
    with pytest.raises(ConstructError) as e:
        open_slide(tagged.path)
    message = str(e.value)
    assert "\n" not in message and re.search(r"352\.\d+ µm/px", message) and "--slide-mpp" in message
    out = tmp_path / "out"
    result = segment_slides([tagged.path], SlideConfig(out=out, target_mpp=1.0, slide_mpp=0.5), ColourPredictor(),
                            progress=False, echo=lambda line: None)
    assert not result.failed
    summary = result.done[0]
    assert summary["slide_mpp"] == 0.5 and summary["slide_mpp_source"] == "--slide-mpp"
    assert summary["grid_size"] == [128, 128]  # 256 px at 0.5 µm/px read at 1 µm/px, not 1.4M px a side


def test_metadata_outside_the_plausible_range_is_refused():
    for props, value in (({"openslide.mpp-x": "0.001"}, "0.001"), ({"openslide.mpp-x": "50"}, "50"),
                         ({"tiff.ResolutionUnit": "inch", "tiff.XResolution": "72"}, "352.778")):
        with pytest.raises(ConstructError, match=f"{value} µm/px .*outside the 0.05-20 µm/px.*--slide-mpp"):
            checked_resolution(Path("s.svs"), props)
    with pytest.raises(ConstructError, match="unreadable resolution metadata.*--slide-mpp"):
        checked_resolution(Path("s.svs"), {"openslide.mpp-x": "n/a"})


def test_mpp_x_and_y_disagreeing_is_reported():
    mpp, warnings = checked_resolution(Path("s.svs"), {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.2505"})
    assert mpp == 0.25 and warnings == []  # within 1%
    mpp, warnings = checked_resolution(Path("s.svs"), {"openslide.mpp-x": "0.25", "openslide.mpp-y": "0.26"})
    assert mpp == 0.25 and len(warnings) == 1 and "0.25" in warnings[0] and "0.26" in warnings[0]
    assert "4.0%" in warnings[0]


def test_upsampling_is_warned_and_refused_on_request(tmp_path):
    coarse = make_synthetic_slide(tmp_path / "coarse.tif", cell=16, mpp=0.5)  # 128 px at 0.5 µm/px
    lines: list[str] = []
    cfg = SlideConfig(out=tmp_path / "out", target_mpp=0.25)
    result = segment_slides([coarse.path], cfg, ColourPredictor(), progress=False, echo=lines.append)
    assert not result.failed
    warned = [line for line in lines if line.startswith("warning: ")]
    assert len(warned) == 1 and "0.5 µm/px" in warned[0] and "0.25 µm/px" in warned[0]
    assert result.done[0]["warnings"] and "upsampled 2x" in result.done[0]["warnings"][0]
    refused = segment_slides([coarse.path], SlideConfig(out=tmp_path / "out2", target_mpp=0.25, no_upsample=True),
                             ColourPredictor(), progress=False, echo=lambda line: None)
    assert len(refused.failed) == 1 and "--no-upsample" in refused.failed[0][1]
    assert not (tmp_path / "out2" / "coarse").exists()
    # Within 20% is not upsampling worth a word.
    near = segment_slides([coarse.path], SlideConfig(out=tmp_path / "out3", target_mpp=0.45, no_upsample=True),
                          ColourPredictor(), progress=False, echo=lambda line: None)
    assert not near.failed and near.done[0]["warnings"] == []


class _StubHandle:
    """An OpenSlide handle of an Aperio-like pyramid whose downsamples are rounded as Aperio's are."""

    level_downsamples = (1.0, 4.0003, 16.0012)
    dimensions = (4000, 4000)

    def __init__(self):
        self.levels_read: list[int] = []

    def get_best_level_for_downsample(self, downsample: float) -> int:  # OpenSlide's rule: no tolerance
        return max(i for i, d in enumerate(self.level_downsamples) if d <= downsample or i == 0)

    def read_region(self, location, level, size):
        self.levels_read.append(level)
        return Image.new("RGBA", size, (200, 100, 200, 255))


def test_pyramid_level_tolerates_vendor_rounding():
    assert best_level((1.0, 4.0003, 16.0012), 4.0) == 1
    assert best_level((1.0, 4.0003, 16.0012), 16.0) == 2
    assert best_level((1.0, 4.0003, 16.0012), 3.9) == 0  # 2.6% too coarse: not that level
    handle = _StubHandle()
    slide = Slide(Path("stub.svs"), handle, 0.25, "metadata")
    patch = slide.read(0, 0, 896, 896, 224, 224)  # a 224 px tile at 1 µm/px from a 0.25 µm/px slide
    assert handle.levels_read == [1] and patch.shape == (224, 224, 3)
    assert np.all(patch == (200, 100, 200))
