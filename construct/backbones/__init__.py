"""Frozen foundation backbones (CONCH, SegFormer) behind one factory."""

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.registry import DEFAULT_SPECS, create_backbone

__all__ = ["BackboneRecipe", "DEFAULT_SPECS", "create_backbone"]
