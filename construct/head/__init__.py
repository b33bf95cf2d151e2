"""The ConStruct head: what `train` learns and `refine` runs, shared by both phases."""

from construct.head.model import ConStructHead, HeadConfig, HeadOutput

__all__ = ["ConStructHead", "HeadConfig", "HeadOutput"]
