"""Stain: estimating a run's stain reference, normalising inputs to it, HED augmentation for students."""

from construct.stain.normalize import DEFAULT_METHOD, METHODS, StainNormalizer, fit_normalizer
from construct.stain.reference import DegenerateStain, StainReference

__all__ = ["DEFAULT_METHOD", "METHODS", "DegenerateStain", "StainNormalizer", "StainReference", "fit_normalizer"]
