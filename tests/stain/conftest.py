from __future__ import annotations

import pytest

from construct.slide.synthetic import make_synthetic_slide


@pytest.fixture(scope="module")
def synth_slide_for_stain(tmp_path_factory):
    return make_synthetic_slide(tmp_path_factory.mktemp("slides") / "synthetic.tif", cell=256, mpp=0.5).path
