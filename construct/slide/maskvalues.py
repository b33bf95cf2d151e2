"""What the values of a slide's mask.ome.tif mean, and the table beside it that says so.

`dataset`: the dataset's own mask indices, as `refine` writes them (BCSS: 0 TUM ... 4 background).
`qupath`: 0 for glass and background and the classes 1..N in class order, as QuPath's and napari's label
images expect (0 is "nothing there"). The label image is kept in dataset indices throughout; the chosen
values are applied as it is written.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from construct.data.classes import ClassSet

MASK_VALUES = ("dataset", "qupath")
BACKGROUND_NAME = "background"  # glass, and tissue no class claimed


def mask_value_lut(classes: ClassSet, scheme: str) -> np.ndarray:
    """(256,) uint8: dataset mask index → the value written in the mask."""
    lut = np.arange(256, dtype=np.uint8)
    if scheme == "qupath":
        lut[:] = 0
        for value, c in enumerate(classes.classes, start=1):
            lut[c.mask_index] = value
    return lut


def mask_table(classes: ClassSet, lut: np.ndarray) -> str:
    """CSV text: value, class, name and colour of each value in the mask, by value."""
    rows = [(int(lut[classes.background_index]), BACKGROUND_NAME, "glass and background", classes.background_color)]
    rows += [(int(lut[c.mask_index]), c.name, c.full_name, c.color) for c in classes.classes]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["value", "class", "name", "red", "green", "blue"])
    writer.writerows((v, n, full, *rgb) for v, n, full, rgb in sorted(rows, key=lambda r: r[0]))
    return buf.getvalue()
