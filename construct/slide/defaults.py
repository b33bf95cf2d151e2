"""Defaults of `construct slide` that the CLI shows in --help, kept free of heavy imports."""

VECTOR_MPP = 2.0  # µm per traced pixel: a few cells; QuPath outlines stay smooth at any zoom a reader uses
# Regions (and holes) smaller than this are left out of the GeoJSON: 100 µm² is a 10 µm square, one or two
# cells, below what a tissue-class map resolves, and each such speck would cost QuPath an object part.
# The mask keeps every pixel.
MIN_AREA_UM2 = 100.0
