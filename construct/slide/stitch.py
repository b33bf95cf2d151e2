"""Blending tiles' soft scores into the slide's label image, block by block, in bounded memory.

The grid is cut into square blocks. Each tile adds its window-weighted scores to the blocks it covers;
the blocks being summed live in memory. A block is finished when every tile that covers it has been
added (the tile list is known in advance): its argmax becomes labels, written to a uint8 Zarr array,
and its scores are dropped. When too many blocks are open at once (e.g. along the edge between two
column strips), the least recently used ones are spilled to a float32 Zarr scratch store and read back
when a tile reaches them again. So memory is bounded by `max_blocks`, whatever the slide's size.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import zarr

BLOCK = 256
MAX_OPEN_BLOCKS = 96  # x (C + 1) x 256 x 256 x 4 bytes: about 125 MB for five channels

# finish(labels_block_origin (row, col), summed scores (C + 1, h, w)) → (h, w) uint8 mask indices
Finish = Callable[[tuple[int, int], np.ndarray], np.ndarray]


class Stitcher:
    def __init__(self, folder: Path, channels: int, height: int, width: int, tile: int,
                 origins: list[tuple[int, int]], finish: Finish, fill: int,
                 block: int = BLOCK, max_blocks: int = MAX_OPEN_BLOCKS):
        self.channels, self.height, self.width, self.tile, self.block = channels, height, width, tile, block
        self.finish = finish
        self.max_blocks = max_blocks
        self.labels = zarr.create_array(store=str(folder / "labels.zarr"), shape=(height, width),
                                        chunks=(block, block), dtype="uint8", fill_value=fill)
        self._scratch_path = folder / "scores.zarr"
        self._scratch: zarr.Array | None = None
        self.expected: dict[tuple[int, int], int] = {}
        for x, y in origins:
            for b in self._blocks_of(x, y):
                self.expected[b] = self.expected.get(b, 0) + 1
        self.added: dict[tuple[int, int], int] = {}
        self.open: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.spilled: set[tuple[int, int]] = set()
        self.peak_open = 0

    def _blocks_of(self, x: int, y: int) -> list[tuple[int, int]]:
        b = self.block
        # Clipped to the grid: the one tile of a slide smaller than a tile reaches past it.
        y1, x1 = min(y + self.tile, self.height), min(x + self.tile, self.width)
        return [(by, bx) for by in range(y // b, (y1 - 1) // b + 1) for bx in range(x // b, (x1 - 1) // b + 1)]

    def _extent(self, key: tuple[int, int]) -> tuple[int, int, int, int]:
        by, bx = key
        r0, c0 = by * self.block, bx * self.block
        return r0, c0, min(r0 + self.block, self.height), min(c0 + self.block, self.width)

    def _scratch_array(self) -> zarr.Array:
        if self._scratch is None:
            self._scratch = zarr.create_array(
                store=str(self._scratch_path), shape=(self.channels, self.height, self.width),
                chunks=(self.channels, self.block, self.block), dtype="float32", fill_value=0.0)
        return self._scratch

    def _get(self, key: tuple[int, int]) -> np.ndarray:
        if key in self.open:
            self.open.move_to_end(key)
            return self.open[key]
        r0, c0, r1, c1 = self._extent(key)
        if key in self.spilled:
            acc = self._scratch_array()[:, r0:r1, c0:c1]
            self.spilled.discard(key)
        else:
            acc = np.zeros((self.channels, r1 - r0, c1 - c0), np.float32)
        self.open[key] = acc
        while len(self.open) > self.max_blocks:
            old, data = self.open.popitem(last=False)
            o0, p0, o1, p1 = self._extent(old)
            self._scratch_array()[:, o0:o1, p0:p1] = data
            self.spilled.add(old)
        self.peak_open = max(self.peak_open, len(self.open))
        return acc

    def add(self, x: int, y: int, weighted: np.ndarray) -> None:
        """Add one tile's window-weighted scores (C + 1, tile, tile) at grid origin (x, y)."""
        for key in self._blocks_of(x, y):
            r0, c0, r1, c1 = self._extent(key)
            acc = self._get(key)
            ys, ye = max(y, r0), min(y + self.tile, r1)
            xs, xe = max(x, c0), min(x + self.tile, c1)
            acc[:, ys - r0:ye - r0, xs - c0:xe - c0] += weighted[:, ys - y:ye - y, xs - x:xe - x]
            self.added[key] = self.added.get(key, 0) + 1
            if self.added[key] == self.expected[key]:
                self._finish(key, self.open.pop(key))

    def _finish(self, key: tuple[int, int], acc: np.ndarray) -> None:
        r0, c0, r1, c1 = self._extent(key)
        self.labels[r0:r1, c0:c1] = self.finish((r0, c0), acc)

    def close(self) -> None:
        """Finish blocks whose tiles did not all arrive (tiles skipped on purpose); nothing left open."""
        for key in [k for k in self.expected if self.added.get(k, 0) < self.expected[k]]:
            self._finish(key, self._get(key))
            self.open.pop(key, None)

