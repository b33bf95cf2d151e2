"""Synthetic slides, written once per session (the tiny head and student runs come from tests/conftest.py)."""

from __future__ import annotations

import pytest

from construct.slide.synthetic import make_synthetic_slide


@pytest.fixture(scope="session")
def synth_slide(tmp_path_factory):
    """2048 x 2048 px at 0.5 µm/px: four 384 µm class blocks on glass, a glass hole in the tumour."""
    return make_synthetic_slide(tmp_path_factory.mktemp("slides") / "synthetic.tif", cell=256, mpp=0.5)
