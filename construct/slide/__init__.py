"""Whole slides: tissue detection, tiling at the model's resolution, stitched outputs (`construct slide`)."""
