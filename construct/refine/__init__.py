"""refine: live TTA inference with a trained run, background channel and Dense-CRF masks.

`from construct.refine import refine, RefineConfig`. The heavy modules load on first use, so importing
the config (as the CLI does to parse flags) stays cheap.
"""

from construct.lazy import lazy_exports

_EXPORTS = {"RefineConfig": "config", "RefineResult": "pipeline", "refine": "pipeline"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
