"""Streaming random batches from a feature store: memory does not grow with the number of images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from construct.store import FeatureStore


class StoreBatches(Dataset):
    """Item i = batch i of row indices → tensors of the requested arrays (+ labels).

    Given a path, the store is opened lazily in each worker process, so nothing large crosses process
    boundaries; given an open store (one kept in memory), batches are read from it in this process.
    """

    def __init__(self, store: str | FeatureStore, names: Sequence[str], batches: Sequence[np.ndarray]):
        self.path = str(store.path) if isinstance(store, FeatureStore) else store
        self.names = tuple(names)
        self.batches = list(batches)
        self._store: FeatureStore | None = store if isinstance(store, FeatureStore) else None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self._store is None:
            self._store = FeatureStore.open(self.path)
        data = self._store.read_batch(self.batches[i], self.names)
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.items()}


def epoch_batches(n_rows: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation per epoch, cut into full batches (batch norm needs more than one sample)."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n_rows, generator=g).numpy()
    n_full = max(1, n_rows // batch_size)
    return [order[i * batch_size: (i + 1) * batch_size] for i in range(n_full)]


def batch_loader(store: str | FeatureStore, names: Sequence[str], batches: Sequence[np.ndarray],
                 workers: int) -> DataLoader:
    return DataLoader(StoreBatches(store, names, batches), batch_size=None, shuffle=False,
                      num_workers=workers, prefetch_factor=4 if workers else None)
