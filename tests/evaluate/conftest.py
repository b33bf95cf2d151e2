"""Tiny BCSS-style data sets written on the fly (a few small tiles, hand-made masks) and a fake store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from construct.data.classes import BCSS
from construct.data.dataset import write_mask


def write_tile(path: Path, shape: tuple[int, int], seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(path)


def make_dataset(
    root: Path,
    gts: dict[str, np.ndarray],
    preds: dict[str, np.ndarray],
    split: str = "test",
    random_weights: bool | None = None,
    synthetic: bool | None = None,
) -> tuple[Path, Path]:
    """data root with `<split>/img` + `<split>/mask`, and a prediction folder; returns (data, preds)."""
    data, pred_dir = root / "data", root / "preds"
    for k, (stem, gt) in enumerate(gts.items()):
        gt = np.asarray(gt, dtype=np.uint8)
        write_tile(data / split / "img" / f"{stem}.png", gt.shape, seed=k)
        write_mask(data / split / "mask" / f"{stem}.png", gt, BCSS)
    pred_dir.mkdir(parents=True, exist_ok=True)
    for stem, pred in preds.items():
        write_mask(pred_dir / f"{stem}.png", np.asarray(pred, dtype=np.uint8), BCSS)
    if random_weights is not None:
        (pred_dir / "refine.json").write_text(json.dumps({"random_weights": random_weights, "backbones": {}}))
    if synthetic is not None:
        (data / "construct_synth.json").write_text(json.dumps({"synthetic": synthetic}))
    return data, pred_dir


class FakeStore:
    """The attributes of construct.store.FeatureStore that the gallery uses."""

    def __init__(self, emb: np.ndarray, text: np.ndarray, paths: list[Path] | None = None):
        self._emb = emb
        self.n_rows = len(emb)
        self.image_ids = [f"tile{i}" for i in range(len(emb))]
        self.image_paths = paths or [Path(f"/train/tile{i}.png") for i in range(len(emb))]
        self.classes = BCSS
        self.text_embeddings = text
        self.reads: list[tuple[str, int]] = []

    def read(self, name: str, rows) -> np.ndarray:
        self.reads.append((name, len(rows)))
        return self._emb[np.asarray(rows)]


@pytest.fixture
def make_store():
    """The fake store class, so tests can build one on their own embeddings."""
    return FakeStore


@pytest.fixture
def dataset(tmp_path: Path):
    """`make_dataset` bound to this test's temporary folder."""
    return lambda *args, **kw: make_dataset(tmp_path, *args, **kw)


@pytest.fixture
def three_tiles(dataset) -> tuple[Path, Path]:
    """Three 4x4 tiles: one perfect, one half wrong, one with only background in the ground truth."""
    gt_a = np.array([[0, 0, 1, 1]] * 4)
    gt_b = np.array([[2, 2, 3, 3]] * 4)
    gt_c = np.full((4, 4), BCSS.background_index)
    pred_b = np.array([[2, 2, 2, 2]] * 4)
    pred_c = gt_c.copy()
    pred_c[0, 0] = 0  # one false-positive tumour pixel on background
    return dataset({"a": gt_a, "b": gt_b, "c": gt_c}, {"a": gt_a, "b": pred_b, "c": pred_c})
