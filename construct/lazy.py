"""Package re-exports that import their module on first use.

A package `__init__` that imported its modules eagerly would load torch, zarr or faiss for anyone who
imports one light submodule (the CLI parsing flags, `train/validate.py` reading metrics); `construct --help`
took 3-4 s that way. `lazy_exports` gives a package the module-level `__getattr__`/`__dir__` of PEP 562
instead, so `from construct.store import FeatureStore` still works and costs the import only then.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from importlib import import_module


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`, where `exports` maps each public name to its submodule."""

    def __getattr__(name: str) -> object:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(f"{package}.{exports[name]}"), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
