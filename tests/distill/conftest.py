"""The refine suite's tiny trained run is the teacher; one tiny student distilled from it for the suite."""

from __future__ import annotations

from pathlib import Path

import pytest

from construct.distill.config import DistillConfig
from construct.distill.trainer import distill
from tests.refine.conftest import TinyRun, tiny_run  # noqa: F401 -- the teacher fixture, shared

# A small, fast student for tests: FPN over MobileNet-V3 small, 2 epochs.
QUICK = dict(arch="fpn", encoder="mobilenet-v3-small", epochs=2, batch_size=4, lr=3e-3, target_workers=0,
             tta=False)


def quick_config(teacher: TinyRun, out: Path, **kw) -> DistillConfig:
    return DistillConfig(run=teacher.run, data=teacher.data, out=out, **{**QUICK, **kw})


@pytest.fixture(scope="session")
def student_run(tiny_run, tmp_path_factory):  # noqa: F811 -- the imported fixture, used
    out = tmp_path_factory.mktemp("student") / "run"
    result = distill(quick_config(tiny_run, out), conch=tiny_run.conch, progress=False)
    return result
