"""refine: live TTA inference with a trained run, background channel and Dense-CRF masks.

`from construct.refine import refine, RefineConfig`. The heavy modules load on first use, so importing
the config (as the CLI does to parse flags) stays cheap.
"""

from __future__ import annotations

from construct.refine.config import RefineConfig

__all__ = ["RefineConfig", "RefineResult", "refine"]


def __getattr__(name: str):
    if name in ("refine", "RefineResult"):
        from construct.refine import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'construct.refine' has no attribute {name!r}")
