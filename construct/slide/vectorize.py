"""Label image → class polygons (shapely), block by block, with holes kept.

Each block's pixels of a class are cut into rectangles (runs along rows, merged down columns while they
line up) whose union is exactly that class's pixel region, holes included; blocks are then unioned per
class, and the result simplified within one grid pixel. Memory follows the boundary's length, not the
slide's area.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

VECTOR_BLOCK = 1024
SIMPLIFY_PX = 1.0  # tolerance, in grid pixels


def rectangles(mask: np.ndarray) -> np.ndarray:
    """(N, 4) x0, y0, x1, y1 rectangles whose union is the True pixels of a 2-D mask."""
    h = mask.shape[0]
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    open_runs: dict[tuple[int, int], int] = {}
    out: list[tuple[int, int, int, int]] = []
    for y in range(h + 1):
        if y < h:
            starts, ends = np.flatnonzero(edges[y] == 1), np.flatnonzero(edges[y] == -1)
            runs = set(zip(starts.tolist(), ends.tolist()))
        else:
            runs = set()
        for run in [r for r in open_runs if r not in runs]:
            out.append((run[0], open_runs.pop(run), run[1], y))
        for run in runs:
            open_runs.setdefault(run, y)
    return np.asarray(out, dtype=np.float64).reshape(-1, 4)


def mask_geometry(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> BaseGeometry:
    """The True pixels of `mask` as one (Multi)Polygon in pixel-edge coordinates, offset by (x0, y0)."""
    r = rectangles(mask)
    if not len(r):
        return shapely.Polygon()
    boxes = shapely.box(r[:, 0] + x0, r[:, 1] + y0, r[:, 2] + x0, r[:, 3] + y0)
    return shapely.union_all(boxes)


def class_geometries(labels, values: list[int], block: int = VECTOR_BLOCK) -> dict[int, BaseGeometry]:
    """Per label value, its region in the 2-D array `labels` (numpy or Zarr) as a simplified, valid
    geometry in pixel coordinates."""
    height, width = labels.shape
    parts: dict[int, list[BaseGeometry]] = {v: [] for v in values}
    for r0 in range(0, height, block):
        for c0 in range(0, width, block):
            tile = np.asarray(labels[r0:r0 + block, c0:c0 + block])
            present = set(np.unique(tile).tolist())
            for v in values:
                if v in present:
                    parts[v].append(mask_geometry(tile == v, c0, r0))
    out = {}
    for v, geoms in parts.items():
        geom = shapely.union_all(geoms) if geoms else shapely.Polygon()
        geom = geom.simplify(SIMPLIFY_PX, preserve_topology=True)
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        out[v] = geom
    return out
