"""Session fixtures that several suites share, built once: the tiny head run and its student."""

from __future__ import annotations

import pytest

from construct.distill.trainer import distill
from tiny_runs import TinyRun, make_tiny_run, quick_config


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    return make_tiny_run(tmp_path_factory.mktemp("refine_run"))


@pytest.fixture(scope="session")
def student_run(tiny_run, tmp_path_factory):
    return distill(quick_config(tiny_run, tmp_path_factory.mktemp("student") / "run"), conch=tiny_run.conch,
                   progress=False)
