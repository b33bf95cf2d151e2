"""ConStruct: weakly supervised tissue segmentation from frozen CONCH + SegFormer features.

The Python API (construct.api) loads on first use, so `import construct` stays light:

    seg = construct.load("runs/construct")
    seg.predict("tile.png").mask
"""

__version__ = "0.1.0"

_API = ("load", "Segmenter", "Prediction")


def __getattr__(name: str):
    if name in _API:
        from construct import api

        return getattr(api, name)
    raise AttributeError(f"module 'construct' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
