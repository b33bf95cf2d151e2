"""Decoding tiles off the critical path: a Dataset over listed tiles, batched (within shards for extract)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from construct.data.classes import ClassSet
from construct.data.dataset import Sample, labels_from_mask, read_image, read_mask
from construct.errors import ConstructError


class TileDataset(Dataset):
    """Row i → (i, image HxWx3 uint8, mask HxW uint8 or empty, labels (C,) uint8, error message).

    A bad file is returned as an error message rather than raised: an exception raised in a
    DataLoader worker reaches the main process wrapped in a multi-line traceback.
    """

    def __init__(self, samples: Sequence[Sample], classes: ClassSet, image_size: int, with_masks: bool):
        self.samples = list(samples)
        self.classes = classes
        self.image_size = image_size
        self.with_masks = with_masks

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, str]:
        s = self.samples[i]
        size = self.image_size
        mask = np.zeros((size, size) if self.with_masks else (0, 0), np.uint8)
        labels = s.labels if s.labels is not None else np.zeros(len(self.classes), np.uint8)
        try:
            image = read_image(s.image_path, size)
            if self.with_masks and s.mask_path is not None:
                mask = read_mask(s.mask_path, self.classes, shape=image.shape[:2])
                labels = labels_from_mask(mask, self.classes)
        except ConstructError as e:
            return i, np.zeros((size, size, 3), np.uint8), mask, np.asarray(labels, np.uint8), str(e)
        return i, image, mask, np.asarray(labels, np.uint8), ""


class ShardBatchSampler(Sampler[list[int]]):
    """Fixed batches that never cross a shard boundary: a resumed run recomputes a shard with exactly
    the batches an uninterrupted run used, so results are bit-identical."""

    def __init__(self, shards: Sequence[tuple[int, int]], batch_size: int):
        self.batches = [list(range(a, min(a + batch_size, b))) for s, b in shards for a in range(s, b, batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def collate(items: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, str]]) -> dict:
    rows, images, masks, labels, errors = zip(*items)
    return {
        "error": next((e for e in errors if e), ""),
        "rows": torch.tensor(rows, dtype=torch.long),
        "images": torch.from_numpy(np.stack(images)),
        "masks": torch.from_numpy(np.stack(masks)),
        "labels": torch.from_numpy(np.stack(labels)),
    }


def tile_loader(dataset: TileDataset, batches: Iterable[Sequence[int]], workers: int) -> DataLoader:
    """Decoded tiles, one batch per list of row indices (e.g. a ShardBatchSampler), in that order;
    `workers` decoding processes (0: in this process)."""
    return DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
        pin_memory=torch.cuda.is_available(), prefetch_factor=4 if workers else None,
    )


def images_to_tensor(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float in [0, 1] on device (normalisation is each backbone's)."""
    return images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
