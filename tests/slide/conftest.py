"""Synthetic slides (written once per session), and the tiny head and student runs of the refine and
distill suites."""

from __future__ import annotations

import pytest

from construct.slide.synthetic import make_synthetic_slide

from distill.conftest import student_run  # noqa: F401  (the distill suite's tiny student, shared)
from refine.conftest import tiny_run  # noqa: F401  (the refine suite's tiny head run, shared)


@pytest.fixture(scope="session")
def synth_slide(tmp_path_factory):
    """2048 x 2048 px at 0.5 µm/px: four 384 µm class blocks on glass, a glass hole in the tumour."""
    return make_synthetic_slide(tmp_path_factory.mktemp("slides") / "synthetic.tif", cell=256, mpp=0.5)
