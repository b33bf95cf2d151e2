"""ConStruct: weakly supervised tissue segmentation from frozen CONCH + SegFormer features."""

__version__ = "0.1.0"
