"""Label image → class polygons, traced at a coarse resolution in row strips, streamed out one by one.

The stitched label image (a Zarr array at the model's resolution) is reduced to the vector resolution by
a majority vote over each `factor` x `factor` cell (so isolated speckle votes itself away instead of
becoming a polygon), read a bounded block at a time. The coarse image is then traced one strip of rows
at a time: each class's pixels in the strip are cut into chains of row runs (y-monotone polygons) that are
unioned into regions, holes included. A polygon that reaches the strip's lower
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


def run_chains(mask: np.ndarray) -> list[np.ndarray]:
    """Outlines ((N, 2) x, y pixel-edge coordinates) of row-run chains whose union is the True pixels of a
    2-D mask. A chain is a run followed down the rows while it overlaps exactly one run in the next row and
    that run only it: a y-monotone polygon. So a smooth region is a few chains however many rows it has,
    and the union that joins them (at splits, merges and holes) handles a few large pieces, not one
    rectangle per row."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    done: list[np.ndarray] = []
    chains: list[tuple[list[tuple[int, int]], int]] = []  # (runs top to bottom, first row) of the last row
    for y in range(mask.shape[0] + 1):
        if y < mask.shape[0]:
            runs = list(zip(np.flatnonzero(edges[y] == 1).tolist(), np.flatnonzero(edges[y] == -1).tolist()))
        else:
            runs = []
        # Overlaps between the previous row's runs (sorted) and this row's, by a merge walk.
        below: list[list[int]] = [[] for _ in chains]
        above: list[list[int]] = [[] for _ in runs]
        i = j = 0
        while i < len(chains) and j < len(runs):
            a0, a1 = chains[i][0][-1]
            b0, b1 = runs[j]
            if a0 < b1 and b0 < a1:
                below[i].append(j)
                above[j].append(i)
            if a1 <= b1:
                i += 1
            else:
                j += 1
        nxt: list[tuple[list[tuple[int, int]], int] | None] = [None] * len(runs)
        for i, (chain, top) in enumerate(chains):
            if len(below[i]) == 1 and len(above[below[i][0]]) == 1:
                chain.append(runs[below[i][0]])
                nxt[below[i][0]] = (chain, top)
            else:
                done.append(_chain_outline(chain, top))
        chains = [c if c is not None else ([runs[j]], y) for j, c in enumerate(nxt)]
    return done


def _chain_outline(chain: list[tuple[int, int]], top: int) -> np.ndarray:
    runs = np.asarray(chain, np.float64)
    ys = np.arange(top, top + len(chain), dtype=np.float64)
    left = np.stack([np.repeat(runs[:, 0], 2), np.stack([ys, ys + 1], axis=1).ravel()], axis=1)
    right = np.stack([np.repeat(runs[::-1, 1], 2), np.stack([ys[::-1] + 1, ys[::-1]], axis=1).ravel()], axis=1)
    return np.concatenate([left, right])


def polygons(geom) -> list[Polygon]:
    """The polygons of a Polygon, MultiPolygon or collection (lines and points dropped)."""
    return [g for g in shapely.get_parts(geom) if g.geom_type == "Polygon" and not g.is_empty]


def mask_polygons(mask: np.ndarray, x0: float = 0.0, y0: float = 0.0) -> list[Polygon]:
    """The True pixels of `mask` as polygons (one per 4-connected region, holes kept) in pixel-edge
    coordinates, offset by (x0, y0)."""
    outlines = run_chains(mask)
    if not outlines:
        return []
    pieces = [Polygon(o + (x0, y0)) for o in outlines]
    return polygons(shapely.union_all(pieces))


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
    # Tolerance 0 first: it only removes the chains' collinear vertices, which would otherwise steer where
    # the real simplification cuts (a 3 px square must stay a square).
    poly = drop_small(shapely.simplify(poly, 0.0), min_area)
    if poly is None:
        return
    for part in polygons(poly.simplify(SIMPLIFY_PX, preserve_topology=True)):
        emit(value, part)
