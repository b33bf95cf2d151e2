"""Tile sources: a split carries its labels (or masks), a folder none; `skip` leaves tiles out in order."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from construct.data.classes import BCSS
from construct.data.dataset import labels_from_mask, list_split, read_image
from construct.data.sources import folder_source, split_source
from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.errors import ConstructError


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("src"), SynthConfig(n_train=5, n_valid=1, n_test=3),
                                  progress=False)


def test_train_split_yields_file_name_labels_in_batches(data):
    source = split_source(data, "train", BCSS, 224)
    samples = list_split(data, "train", BCSS)
    batches = list(source.batches(2))
    assert [len(b) for b in batches] == [2, 2, 1] and len(source) == 5
    tiles = [t for b in batches for t in b]
    assert [t.stem for t in tiles] == [s.image_id for s in samples]
    for t, s in zip(tiles, samples):
        assert np.array_equal(t.labels, s.labels) and t.mask is None
        assert np.array_equal(t.image, read_image(s.image_path))


def test_test_split_with_masks_gives_labels_from_masks_and_skip_leaves_tiles_out(data):
    source = split_source(data, "test", BCSS, 224, with_masks=True)
    stems = [s.image_id for s in source.samples]
    tiles = [t for b in source.batches(8, skip=lambda stem: stem == stems[1]) for t in b]
    assert [t.stem for t in tiles] == [stems[0], stems[2]]
    for t in tiles:
        assert t.mask.shape == (224, 224) and np.array_equal(t.labels, labels_from_mask(t.mask, BCSS))
    assert not split_source(data, "test", BCSS, 224).has_labels


def test_folder_source_is_unlabelled_and_names_a_bad_file(data, tmp_path):
    for s in list_split(data, "test", BCSS):
        shutil.copy(s.image_path, tmp_path / s.image_path.name)
    (tmp_path / "zz_bad.png").write_bytes(b"not a png")
    source = folder_source(tmp_path, BCSS, 224)
    assert len(source) == 4 and not source.has_labels
    batches = source.batches(3)
    assert all(t.labels is None for t in next(batches))
    with pytest.raises(ConstructError, match="zz_bad.png: unreadable"):
        next(batches)
