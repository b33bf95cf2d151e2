"""Tile sources: where the inference pipeline's tiles come from (a dataset split, a folder, a slide).

A source yields batches of decoded tiles at the predictor's tile size. It may skip tiles a sink already
holds (resume). Sources know nothing of models: data flows source → predictor → sink.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from construct.data.classes import ClassSet
from construct.data.dataset import IMAGE_EXTENSIONS, Sample, list_split
from construct.data.loader import TileDataset, tile_loader
from construct.errors import ConstructError


@dataclass
class Tile:
    stem: str  # unique within the source: the file stem, or the tile's grid position on a slide
    image: np.ndarray  # (H, W, 3) uint8 RGB at the predictor's tile size
    labels: np.ndarray | None = None  # (C,) uint8 image labels, when the source has them (gates labels/gt)
    mask: np.ndarray | None = None  # (H, W) uint8 ground-truth mask indices, when the source has them
    origin: tuple[int, int] | None = None  # slides: (x, y) of the tile's top-left on the tiling grid


class TileSource(Protocol):
    def __len__(self) -> int: ...

    def batches(self, batch_size: int, skip: Callable[[str], bool] | None = None) -> Iterator[list[Tile]]:
        """Tiles in a fixed order, `batch_size` at a time, leaving out those whose stem `skip` accepts.
        A file that cannot be read raises a one-line ConstructError naming it."""
        ...


class SampleSource:
    """Tiles from listed files (a dataset split or a folder), decoded by `workers` loader processes.

    With `with_masks`, each tile carries its ground-truth mask and the labels derived from it (the `gt`
    gate); otherwise the labels are those of the file name, if any."""

    def __init__(self, samples: Sequence[Sample], classes: ClassSet, tile_size: int, with_masks: bool = False,
                 workers: int = 0, name: str = "tiles"):
        self.samples = list(samples)
        self.classes = classes
        self.tile_size = tile_size
        self.with_masks = with_masks
        self.workers = workers
        self.name = name

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_labels(self) -> bool:
        return self.with_masks or all(s.labels is not None for s in self.samples)

    @property
    def has_masks(self) -> bool:
        return all(s.mask_path is not None for s in self.samples)

    def batches(self, batch_size: int, skip: Callable[[str], bool] | None = None) -> Iterator[list[Tile]]:
        rows = [i for i, s in enumerate(self.samples) if skip is None or not skip(s.image_id)]
        chunks = [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]
        dataset = TileDataset(self.samples, self.classes, self.tile_size, self.with_masks)
        for batch in tile_loader(dataset, chunks, self.workers):
            if batch["error"]:
                raise ConstructError(batch["error"])
            has_labels = self.has_labels
            yield [
                Tile(self.samples[row].image_id, image, labels if has_labels else None,
                     mask if self.with_masks else None)
                for row, image, labels, mask in zip(batch["rows"].tolist(), batch["images"].numpy(),
                                                    batch["labels"].numpy(), batch["masks"].numpy())
            ]


def split_source(root: Path, split: str, classes: ClassSet, tile_size: int, with_masks: bool = False,
                 workers: int = 0) -> SampleSource:
    """A dataset split (BCSS-WSSS layout): train tiles carry their file-name labels, valid/test their masks."""
    return SampleSource(list_split(Path(root), split, classes), classes, tile_size, with_masks, workers, split)


def list_images(folder: Path) -> list[Sample]:
    """Every image in a folder (no labels, no masks), sorted by name; stems must be unique."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConstructError(f"{folder}: images folder not found")
    files = sorted((p for p in folder.iterdir()
                    if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()),
                   key=lambda p: p.name)
    if not files:
        raise ConstructError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise ConstructError(f"{p}: same stem as {seen[p.stem].name}; masks are named by stem, rename one")
        seen[p.stem] = p
    return [Sample(p.stem, p, None, None) for p in files]


def folder_source(folder: Path, classes: ClassSet, tile_size: int, workers: int = 0) -> SampleSource:
    """Every image in a folder, unlabelled."""
    return SampleSource(list_images(folder), classes, tile_size, False, workers, Path(folder).resolve().name)


class MemorySource:
    """Tiles already decoded, in memory (the Python API's images), with optional (C,) labels each."""

    def __init__(self, tiles: Sequence[Tile], name: str = "images"):
        self.tiles = list(tiles)
        self.name = name

    def __len__(self) -> int:
        return len(self.tiles)

    def batches(self, batch_size: int, skip: Callable[[str], bool] | None = None) -> Iterator[list[Tile]]:
        todo = [t for t in self.tiles if skip is None or not skip(t.stem)]
        for i in range(0, len(todo), batch_size):
            yield todo[i:i + batch_size]
