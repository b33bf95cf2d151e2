"""Label image → class polygons, traced at a coarse resolution in row strips, streamed out one by one.

The stitched label image (a Zarr array at the model's resolution) is reduced to the vector resolution by
a majority vote over each `factor` x `factor` cell (so isolated speckle votes itself away instead of
becoming a polygon), read a bounded block at a time. The coarse image is then traced one strip of rows
at a time: each class's pixels in the strip are cut into rectangles (runs along rows, merged down columns
while they line up) and unioned into polygons, holes included. A polygon that reaches the strip's lower
edge may continue in the next strip, so it is kept open and unioned with the pieces that touch it there;
every other polygon is finished: pieces and holes under the minimum area are dropped, it is simplified
within a fraction of a coarse pixel and handed to the caller. Memory follows one strip plus the regions
crossing its lower edge, not the slide's area.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import shapely
from shapely.geometry import Polygon

STRIP_ROWS = 512  # coarse rows traced at a time
VOTE_PIXELS = 1 << 20  # label pixels per majority-vote block (its keys: 24 bytes a pixel)
SIMPLIFY_PX = 1.0  # tolerance in traced pixels: removes the pixel staircase, moves no edge by more than one


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


def polygons(geom) -> list[Polygon]:
    """The polygons of a Polygon, MultiPolygon or collection (lines and points dropped)."""
    return [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon" and not g.is_empty]


def mask_polygons(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> list[Polygon]:
    """The True pixels of `mask` as polygons (one per 4-connected region, holes kept) in pixel-edge
    coordinates, offset by (x0, y0)."""
    r = rectangles(mask)
    if not len(r):
        return []
    boxes = shapely.box(r[:, 0] + x0, r[:, 1] + y0, r[:, 2] + x0, r[:, 3] + y0)
    return polygons(shapely.union_all(boxes))


def present_values(block: np.ndarray, rows: int = 256) -> list[int]:
    """The distinct values of a uint8 array, counted a few rows at a time (bincount widens to int64)."""
    seen = np.zeros(256, bool)
    for r in range(0, block.shape[0], rows):
        seen |= np.bincount(block[r:r + rows].ravel(), minlength=256) > 0
    return np.flatnonzero(seen).tolist()


def majority(block: np.ndarray, factor: int) -> np.ndarray:
    """Each `factor` x `factor` cell of a label block → its most frequent label (ties: the lowest);
    cells cut by the block's edge vote with the pixels they have. One bincount over (cell, label) keys:
    a pass per label value with strided sums is several times slower."""
    if factor == 1:
        return block
    height, width = block.shape
    h, w = -(-height // factor), -(-width // factor)
    values = present_values(block)
    if len(values) == 1:
        return np.full((h, w), values[0], np.uint8)
    rank = np.zeros(256, np.int64)
    rank[values] = np.arange(len(values))
    cell = (np.arange(height) // factor)[:, None] * w + (np.arange(width) // factor)[None, :]
    keys = cell * len(values) + rank[block]
    counts = np.bincount(keys.ravel(), minlength=h * w * len(values)).reshape(h * w, len(values))
    return np.asarray(values, np.uint8)[counts.argmax(axis=1)].reshape(h, w)


def coarse_strips(labels, factor: int, rows: int = STRIP_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first coarse row, coarse strip) of the 2-D label array (numpy or Zarr) reduced by `factor`,
    reading at most about VOTE_PIXELS label pixels at a time."""
    height, width = labels.shape
    coarse_w = -(-width // factor)
    cols = max(1, VOTE_PIXELS // (rows * factor * factor))  # coarse columns per read
    for r in range(0, -(-height // factor), rows):
        strip = np.concatenate([
            majority(np.asarray(labels[r * factor:(r + rows) * factor, c * factor:(c + cols) * factor]), factor)
            for c in range(0, coarse_w, cols)], axis=1)
        yield r, strip


def drop_small(poly: Polygon, min_area: float) -> Polygon | None:
    """`poly` without its holes under `min_area`; None if it is itself under it."""
    if poly.area < min_area:
        return None
    holes = [ring for ring in poly.interiors if Polygon(ring).area >= min_area]
    return poly if len(holes) == len(poly.interiors) else Polygon(poly.exterior, holes)


# emit(label value, polygon in coarse pixel coordinates)
Emit = Callable[[int, Polygon], None]


def trace(labels, values: list[int], factor: int, min_area: float, emit: Emit, rows: int = STRIP_ROWS) -> None:
    """Every region of each label value in `values`, in coarse pixels (`factor` label pixels each), handed
    to `emit` as soon as it is complete: holes kept, pieces and holes under `min_area` coarse px² dropped,
    simplified within SIMPLIFY_PX. Regions are 4-connected (pixels touching at a corner only are two)."""
    coarse_h = -(-labels.shape[0] // factor)
    open_parts: dict[int, list[Polygon]] = {v: [] for v in values}
    for r0, strip in coarse_strips(labels, factor, rows):
        r1 = r0 + strip.shape[0]
        present = set(present_values(strip))
        for v in values:
            new = mask_polygons(strip == v, 0, r0) if v in present else []
            joining = [p for p in new if p.bounds[1] == r0]
            if open_parts[v] and joining:
                merged = polygons(shapely.union_all(open_parts[v] + joining))
                new = [p for p in new if p.bounds[1] != r0] + merged
            else:
                new = new + open_parts[v]
            open_parts[v] = []
            for p in new:
                if p.bounds[3] == r1 and r1 < coarse_h:
                    open_parts[v].append(p)
                else:
                    _finish(v, p, min_area, emit)


def _finish(value: int, poly: Polygon, min_area: float, emit: Emit) -> None:
    poly = drop_small(poly, min_area)
    if poly is None:
        return
    for part in polygons(poly.simplify(SIMPLIFY_PX, preserve_topology=True)):
        emit(value, part)
