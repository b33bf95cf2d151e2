"""`python -m construct` is the `construct` command, which torchrun needs (`torchrun -m construct ...`)."""

from __future__ import annotations

import subprocess
import sys


def test_python_m_construct_help():
    done = subprocess.run([sys.executable, "-m", "construct", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Usage: python -m construct" in done.stdout
    for command in ("extract", "train", "refine", "eval"):
        assert command in done.stdout
