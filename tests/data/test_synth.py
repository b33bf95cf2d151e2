"""The synthetic dataset: deterministic, in the BCSS-WSSS layout, labels agreeing with masks, and
classes that differ in colour and texture at the 16x16-patch scale the model sees."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from construct.data.classes import BCSS, LUAD
from construct.data.dataset import labels_from_mask, list_split, read_image, read_mask
from construct.data.synth import MIN_REGION_FRACTION, SynthConfig, make_synthetic_dataset, make_tile
from construct.errors import ConstructError

CONFIG = SynthConfig(n_train=16, n_valid=4, n_test=4, seed=3)
PATCH = 16


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "ds", CONFIG, progress=False)


def test_deterministic(dataset: Path, tmp_path: Path) -> None:
    again = make_synthetic_dataset(tmp_path / "again", CONFIG, progress=False)
    assert tree(again) == tree(dataset)
    other = tree(make_synthetic_dataset(tmp_path / "other", replace(CONFIG, seed=4), progress=False))
    first = tree(dataset)
    images = [name for name in first if name.startswith(("valid/img/", "test/img/"))]
    assert images and all(first[name] != other[name] for name in images)


def test_layout_and_marker(dataset: Path) -> None:
    assert json.loads((dataset / "construct_synth.json").read_text()) == {
        "synthetic": True, "seed": 3, "n_train": 16, "n_valid": 4, "n_test": 4, "size": 224, "classes": "bcss",
    }
    train = list_split(dataset, "train", BCSS)
    assert [s.image_id for s in train][:2] == [
        f"synth_train_00000+0[{''.join(map(str, train[0].labels))}]",
        f"synth_train_00001+0[{''.join(map(str, train[1].labels))}]",
    ]
    assert len(train) == 16
    for split, n in (("valid", 4), ("test", 4)):
        samples = list_split(dataset, split, BCSS)
        assert [s.image_id for s in samples] == [f"synth_{split}_{i:05d}" for i in range(n)]
        for s in samples:
            image = read_image(s.image_path)
            mask = read_mask(s.mask_path, BCSS, shape=image.shape[:2])
            assert mask.max() <= BCSS.background_index
            assert labels_from_mask(mask, BCSS).any()  # never background only


def test_train_labels_match_hidden_masks(dataset: Path) -> None:
    for i, sample in enumerate(list_split(dataset, "train", BCSS)):
        image, mask = make_tile(CONFIG.seed, "train", i)
        assert np.array_equal(read_image(sample.image_path), image)
        assert np.array_equal(sample.labels, labels_from_mask(mask, BCSS))
        assert 1 <= sample.labels.sum() <= 3


def test_present_classes_are_not_fragments() -> None:
    for i in range(30):
        _, mask = make_tile(0, "valid", i)
        fractions = np.bincount(mask.ravel(), minlength=5) / mask.size
        present = fractions[fractions > 0]
        assert present.min() >= MIN_REGION_FRACTION


def test_every_class_appears(dataset: Path) -> None:
    seen = np.zeros(len(BCSS), dtype=bool)
    for s in list_split(dataset, "train", BCSS):
        seen |= s.labels.astype(bool)
    for split in ("valid", "test"):
        for s in list_split(dataset, split, BCSS):
            seen |= labels_from_mask(read_mask(s.mask_path, BCSS), BCSS).astype(bool)
    assert seen.all()


def pure_patches(n_tiles: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std colour of every 16x16 patch lying inside one tissue class, with its class."""
    features, targets = [], []
    for i in range(n_tiles):
        image, mask = make_tile(0, split, i)
        patches = image.reshape(14, PATCH, 14, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(-1, PATCH * PATCH, 3)
        labels = mask.reshape(14, PATCH, 14, PATCH).transpose(0, 2, 1, 3).reshape(-1, PATCH * PATCH)
        pure = (labels == labels[:, :1]).all(axis=1) & (labels[:, 0] < BCSS.background_index)
        p = patches[pure].astype(np.float64)
        features.append(np.concatenate([p.mean(axis=1), p.std(axis=1)], axis=1))
        targets.append(labels[pure, 0])
    return np.concatenate(features), np.concatenate(targets)


def test_class_colours_differ() -> None:
    features, targets = pure_patches(24, "train")
    means = np.array([features[targets == c, :3].mean(axis=0) for c in range(len(BCSS))])
    for a, b in itertools.combinations(range(len(BCSS)), 2):
        assert np.linalg.norm(means[a] - means[b]) > 20, (BCSS.names[a], BCSS.names[b], means[a], means[b])


def test_classes_separable_at_patch_scale() -> None:
    """Nearest centroid on patch colour statistics, fitted on train tiles, scored on test tiles."""
    x_train, y_train = pure_patches(24, "train")
    x_test, y_test = pure_patches(16, "test")
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    centroids = np.array([((x_train[y_train == c] - mu) / sd).mean(axis=0) for c in range(len(BCSS))])
    distances = ((((x_test - mu) / sd)[:, None] - centroids[None]) ** 2).sum(axis=-1)
    accuracy = (distances.argmin(axis=1) == y_test).mean()
    assert accuracy > 0.85


def test_background_is_pale() -> None:
    values = [image[mask == BCSS.background_index] for image, mask in (make_tile(0, "test", i) for i in range(20))]
    background = np.concatenate(values).astype(np.float64)
    assert len(background) > 0
    assert background.mean() > 235 and background.std() < 8


def test_existing_folder(dataset: Path, tmp_path: Path) -> None:
    before = tree(dataset)
    assert make_synthetic_dataset(dataset, CONFIG, progress=False) == dataset  # complete: left as is
    assert tree(dataset) == before
    with pytest.raises(ConstructError, match="other settings"):
        make_synthetic_dataset(dataset, SynthConfig(n_train=1, n_valid=1, n_test=1), progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("x")
    with pytest.raises(ConstructError, match="not empty"):
        make_synthetic_dataset(tmp_path / "busy", CONFIG, progress=False)


def test_luad_class_set() -> None:
    image, mask = make_tile(0, "valid", 1, classes=LUAD)
    assert image.shape == (224, 224, 3)
    assert mask.max() <= LUAD.background_index


def test_bad_config(tmp_path: Path) -> None:
    with pytest.raises(ConstructError, match="n_train must be >= 0"):
        make_synthetic_dataset(tmp_path / "x", SynthConfig(n_train=-1), progress=False)
