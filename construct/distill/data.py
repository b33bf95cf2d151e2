"""Training batches for the student: train tiles with their teacher targets, and their augmentation.

Augmentation is drawn per tile: one of the 8 dihedral symmetries, applied jointly to the image, the
teacher's scores and its mask; then brightness and a per-channel colour gain on the image alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from construct.data.dataset import Sample, read_image
from construct.inference.score_store import ScoreStore, dequantize_scores

BRIGHTNESS = (0.9, 1.1)
COLOUR_GAIN = (0.95, 1.05)


class TargetSet(Dataset):
    """Row i → image (H, W, 3) uint8, teacher scores (C + 1, H, W) uint8, mask (H, W), gate (C,)."""

    def __init__(self, samples: list[Sample], store: ScoreStore, tile_size: int):
        self.samples = samples
        self.store = store
        self.rows = np.array([store.row_of[s.image_id] for s in samples])
        self.tile_size = tile_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        scores, mask, gate = self.store.read(self.rows[i:i + 1])
        return read_image(self.samples[i].image_path, self.tile_size), scores[0], mask[0], gate[0]


def collate(items: list) -> dict[str, torch.Tensor]:
    images, scores, masks, gates = (np.stack(x) for x in zip(*items))
    return {"images": torch.from_numpy(images), "scores": torch.from_numpy(scores),
            "mask": torch.from_numpy(masks), "gate": torch.from_numpy(gates)}


def target_loader(dataset: TargetSet, batches: list[list[int]], workers: int) -> DataLoader:
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                      prefetch_factor=4 if workers else None)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, min_rows: int = 1) -> list[list[int]]:
    """The same shuffled batches for a given (seed, epoch), so a resumed run sees what it would have; a last
    batch of fewer than `min_rows` tiles (the processes sharing each batch) is left out."""
    order = np.random.default_rng([seed, epoch]).permutation(n).tolist()
    return [b for b in (order[i:i + batch_size] for i in range(0, n, batch_size)) if len(b) >= min_rows]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Symmetry k in 0..7 of the last two axes: k % 4 quarter turns, then a flip when k ≥ 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def augment(batch: dict[str, torch.Tensor], rng: np.random.Generator, crop: int | None = None) -> dict[str, torch.Tensor]:
    """images01 (B, 3, H, W), teacher scores (B, C + 1, H, W) in [0, 1], mask (B, H, W): augmented copies,
    cut to a random `crop` x `crop` window per tile when `crop` is given (cheaper steps, same network)."""
    images, scores, mask = batch["images01"], batch["teacher"], batch["mask"]
    b, _, h, w = images.shape
    ks = rng.integers(0, 8, b)
    size = min(crop or h, h, w)
    ys, xs = rng.integers(0, h - size + 1, b), rng.integers(0, w - size + 1, b)

    def view(x: torch.Tensor, j: int) -> torch.Tensor:
        return dihedral(x[j, ..., ys[j]:ys[j] + size, xs[j]:xs[j] + size], int(ks[j]))

    images = torch.stack([view(images, j) for j in range(b)])
    scores = torch.stack([view(scores, j) for j in range(b)])
    mask = torch.stack([view(mask, j) for j in range(b)])
    gain = rng.uniform(*BRIGHTNESS, (b, 1, 1, 1)) * rng.uniform(*COLOUR_GAIN, (b, 3, 1, 1))
    images = (images * torch.from_numpy(gain).to(images)).clamp(0.0, 1.0)
    return {**batch, "images01": images, "teacher": scores, "mask": mask}


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """Loader batch → images01 float, teacher scores float in [0, 1], mask long, gate float on device."""
    return {
        "images01": batch["images"].to(device).permute(0, 3, 1, 2).float().div_(255.0),
        "teacher": torch.from_numpy(dequantize_scores(batch["scores"].numpy())).to(device),
        "mask": batch["mask"].to(device).long(),
        "gate": batch["gate"].to(device).float(),
    }
