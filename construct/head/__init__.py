"""The ConStruct head: what `train` learns and `refine` runs, shared by both phases."""

from construct.lazy import lazy_exports

_EXPORTS = {name: "model" for name in ("ConStructHead", "HeadConfig", "HeadOutput")}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
