"""The tiles of a slide as a TileSource: read at the model's resolution, streamed, tissue tiles only.

Reading runs in threads (OpenSlide releases the GIL and is thread-safe), a few batches ahead of the
consumer, so the predictor rarely waits on the disk; memory holds only those batches.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from construct.data.sources import Tile
from construct.slide.grid import Grid
from construct.slide.phases import Phases
from construct.slide.reader import Slide

READ_THREADS = 2
PREFETCH_BATCHES = 2


def tile_stem(x: int, y: int) -> str:
    return f"x{x}_y{y}"


class SlideTileSource:
    def __init__(self, slide: Slide, grid: Grid, origins: list[tuple[int, int]], phases: Phases | None = None):
        self.slide = slide
        self.grid = grid
        self.origins = origins
        self.phases = phases or Phases()  # bills the time spent waiting for tiles to `read`

    def __len__(self) -> int:
        return len(self.origins)

    def read_tile(self, x: int, y: int) -> Tile:
        g = self.grid
        side = g.tile * g.scale
        image = self.slide.read(x * g.scale, y * g.scale, side, side, g.tile, g.tile)
        return Tile(stem=tile_stem(x, y), image=image, origin=(x, y))

    def batches(self, batch_size: int, skip: Callable[[str], bool] | None = None) -> Iterator[list[Tile]]:
        todo = [o for o in self.origins if skip is None or not skip(tile_stem(*o))]
        chunks = [todo[i:i + batch_size] for i in range(0, len(todo), batch_size)]
        with ThreadPoolExecutor(READ_THREADS, thread_name_prefix="slide-read") as pool:
            pending: deque[list[Future]] = deque()
            for chunk in chunks:
                pending.append([pool.submit(self.read_tile, x, y) for x, y in chunk])
                if len(pending) > PREFETCH_BATCHES:
                    yield self._wait(pending.popleft())
            while pending:
                yield self._wait(pending.popleft())

    def _wait(self, futures: list[Future]) -> list[Tile]:
        with self.phases.time("read"):
            return [f.result() for f in futures]

