"""Frozen foundation backbones (CONCH, SegFormer) behind one factory."""

from construct.lazy import lazy_exports

_EXPORTS = {"BackboneRecipe": "recipe", "DEFAULT_SPECS": "registry", "create_backbone": "registry"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
