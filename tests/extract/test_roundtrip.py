"""extract → read back: what the store holds equals a direct forward of the backbones, plus its metadata."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from construct import __version__
from construct.data.classes import BCSS
from construct.extract.extractor import extract
from construct.head.pooler import ContrastiveHead
from construct.store import FeatureStore

from .helpers import N_TRAIN, N_VALID, feature_bytes, tiny_config


def load_images(paths) -> torch.Tensor:
    arr = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0


def direct_forward(backbones, paths) -> dict[str, np.ndarray]:
    conch, seg = backbones
    with torch.no_grad():
        x = load_images(paths)
        return {k: v.numpy() for k, v in {**conch.taps(x), **seg.taps(x)}.items()}


def assert_float16_close(stored: np.ndarray, ref: np.ndarray, name: str) -> None:
    # float16 keeps ~11 bits: 1e-3 relative, plus a small absolute floor for values near zero
    np.testing.assert_allclose(stored, ref, rtol=1e-3, atol=1e-3 * float(np.abs(ref).max()), err_msg=name)


def test_train_store_holds_the_backbone_taps(train_store, synth_data, tiny_backbones):
    store = FeatureStore.open(train_store)
    files = sorted((synth_data / "train").glob("*.png"))
    assert store.n_rows == N_TRAIN and store.is_complete and store.split == "train"
    assert store.image_ids == [f.stem for f in files]
    assert [p.resolve() for p in store.image_paths] == [f.resolve() for f in files]
    ref = direct_forward(tiny_backbones, files)
    rows = np.arange(N_TRAIN)
    for name in ("conch_b3", "conch_b6", "conch_b9", "conch_b12"):
        assert store.shape(name) == (196, 64)
        assert store._group[name].dtype == np.float16
        assert_float16_close(store.read(name, rows), ref[name], name)
    assert store.shape("seg_s3") == (40, 14, 14)
    assert_float16_close(store.read("seg_s3", rows), ref["seg_s3"], "seg_s3")
    assert not any(store.has(f"seg_s{s}") for s in (1, 2, 4))  # only the distillation stage by default
    assert_float16_close(store.read("conch_cls", rows), ref["conch_cls"], "conch_cls")
    np.testing.assert_allclose(store.read("conch_embedding", rows), ref["conch_embedding"], rtol=1e-4, atol=1e-5)
    assert not store.has("mask")
    # labels of the training split come from the bracket in each name
    names = [re.search(r"\[(\d{4})\]\.png$", f.name)[1] for f in files]
    np.testing.assert_array_equal(store.labels, np.array([[int(c) for c in n] for n in names], np.uint8))
    assert store.labels.dtype == np.uint8 and store.meta["labels_from_names"] is True


def test_train_store_metadata(train_store, tiny_backbones):
    conch, seg = tiny_backbones
    store = FeatureStore.open(train_store)
    assert store.recipes == {"conch": conch.recipe, "segformer": seg.recipe}
    for r in store.recipes.values():
        assert len(r.fingerprint) == 64 and r.random_weights and r.spec == "random-tiny"
    assert store.random_weights is True and store.meta["random_weights"] is True
    assert store.classes == BCSS and store.classes.names == ["TUM", "STR", "LYM", "NEC"]
    assert store.meta["package_version"] == __version__
    assert store.meta["preprocessing"]["image_size"] == 224 and store.meta["preprocessing"]["precision"] == "fp32"
    cfg = store.meta["config"]
    assert cfg["store_dtype"] == "float16" and cfg["out"] == str(train_store) and cfg["shard_rows"] == 4
    assert cfg["conch"] == cfg["segformer"] == "random-tiny"
    assert store.layout.conch_taps == ("conch_b3", "conch_b6", "conch_b9", "conch_b12")
    assert store.layout.seg_taps == ("seg_s3",) and store.layout.store_dtype == "float16"
    # the text embeddings of the class descriptions and the frozen contrastive head travel with the store
    expected = conch.text_embeddings(BCSS.descriptions).numpy()
    assert store.text_embeddings.shape == (4, 64)
    np.testing.assert_allclose(store.text_embeddings, expected, rtol=1e-6, atol=1e-6)
    state = {k: torch.from_numpy(v) for k, v in store.contrastive_head_state().items()}
    head = ContrastiveHead.from_state_dict(state)
    tokens = torch.randn(2, 197, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(head(tokens), conch.contrastive_head(tokens))


def test_valid_store_masks_and_labels_from_masks(valid_store, synth_data, tiny_backbones):
    store = FeatureStore.open(valid_store)
    files = sorted((synth_data / "valid" / "img").glob("*.png"))
    assert store.n_rows == N_VALID and store.image_ids == [f.stem for f in files]
    masks = np.stack([np.asarray(Image.open(synth_data / "valid" / "mask" / f.name)) for f in files])
    np.testing.assert_array_equal(store.read("mask", np.arange(N_VALID)), masks)
    present = np.stack([[np.any(m == c) for c in range(4)] for m in masks]).astype(np.uint8)
    np.testing.assert_array_equal(store.labels, present)
    assert store.meta["labels_from_names"] is False
    assert store.layout.seg_taps == ("seg_s2", "seg_s3")
    assert store.shape("seg_s2") == (32, 28, 28) and store.shape("seg_s3") == (40, 14, 14)
    ref = direct_forward(tiny_backbones, files)
    for name in ("seg_s2", "seg_s3", "conch_b12"):
        assert_float16_close(store.read(name, np.arange(N_VALID)), ref[name], name)


def test_int8_store_is_close_and_smaller(train_store, synth_data, tiny_backbones, tmp_path):
    out = tmp_path / "int8.zarr"
    extract(tiny_config(synth_data, out, split="train", store_dtype="int8"), *tiny_backbones, progress=False)
    q, f = FeatureStore.open(out), FeatureStore.open(train_store)
    assert q.layout.store_dtype == "int8" and q._group["conch_b3"].dtype == np.int8
    rows = np.arange(N_TRAIN)
    for name, axis in (("conch_b3", -1), ("conch_b6", -1), ("conch_b9", -1), ("conch_b12", -1), ("seg_s3", 1)):
        a, b = q.read(name, rows), f.read(name, rows)
        assert a.dtype == np.float32
        cos = (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis))
        assert cos.min() >= 0.999, (name, cos.min())
    np.testing.assert_array_equal(q.labels, f.labels)
    np.testing.assert_array_equal(q.read("conch_embedding", rows), f.read("conch_embedding", rows))
    assert feature_bytes(out) < 0.6 * feature_bytes(train_store), (feature_bytes(out), feature_bytes(train_store))
    total = lambda p: sum(x.stat().st_size for x in p.rglob("*") if x.is_file())  # noqa: E731
    assert total(out) < total(train_store)


@pytest.mark.parametrize("rows", [[5, 0, 11], [3]])
def test_read_batch_for_training(train_store, rows):
    store = FeatureStore.open(train_store)
    batch = store.read_batch(rows, ["conch_b12", "seg_s3"])
    assert batch["conch_b12"].shape == (len(rows), 196, 64) and batch["seg_s3"].shape == (len(rows), 40, 14, 14)
    np.testing.assert_array_equal(batch["labels"], store.labels[rows])
    np.testing.assert_array_equal(batch["conch_b12"], np.stack([store.read("conch_b12", [r])[0] for r in rows]))


def test_conch_at_448_on_224_px_tiles(synth_data, tiny_backbones, tmp_path):
    """--image-size 448 is CONCH's input size: 224 px tiles are upsampled for CONCH only (28x28 tokens);
    SegFormer and the masks stay at the tile's resolution."""
    from construct.backbones.conch import build_conch

    conch448 = build_conch("random-tiny", 448)
    out = tmp_path / "valid448.zarr"
    extract(tiny_config(synth_data, out, split="valid", image_size=448, limit=4), conch448, tiny_backbones[1],
            progress=False)
    store = FeatureStore.open(out)
    assert store.shape("conch_b12") == (784, 64) and store.shape("seg_s3") == (40, 14, 14)
    assert store.shape("mask") == (224, 224)
    assert store.recipes["conch"].image_size == 448 and store.meta["preprocessing"]["tile_size"] == 224
    files = sorted((synth_data / "valid" / "img").glob("*.png"))[:4]
    x = load_images(files)
    with torch.no_grad():
        up = torch.nn.functional.interpolate(x, size=448, mode="bicubic", align_corners=False).clamp(0, 1)
        ref = conch448.taps(up)["conch_b12"].numpy()
    assert_float16_close(store.read("conch_b12", np.arange(4)), ref, "conch_b12 at 448")


def test_bf16_forward_is_close_to_fp32(train_store, synth_data, tiny_backbones, tmp_path):
    out = tmp_path / "bf16.zarr"
    extract(tiny_config(synth_data, out, split="train", precision="bf16", limit=4), *tiny_backbones, progress=False)
    a, b = FeatureStore.open(out), FeatureStore.open(train_store)
    assert a.meta["preprocessing"]["precision"] == "bf16"
    for name, axis in (("conch_b12", -1), ("seg_s3", 1)):
        x, y = a.read(name, range(4)), b.read(name, range(4))
        cos = (x * y).sum(axis) / (np.linalg.norm(x, axis=axis) * np.linalg.norm(y, axis=axis))
        assert cos.min() > 0.98, (name, cos.min())


def test_auto_resumes_a_store_at_the_precision_it_was_started_with(synth_data, tiny_backbones, tmp_path,
                                                                     monkeypatch):
    import construct.runtime as runtime

    out = tmp_path / "bf16.zarr"
    extract(tiny_config(synth_data, out, split="train", precision="bf16", limit=4), *tiny_backbones, progress=False)
    monkeypatch.setattr(runtime, "native_bf16", lambda device: None)  # auto alone would pick fp32 here
    extract(tiny_config(synth_data, out, split="train", precision="auto", limit=4), *tiny_backbones, progress=False)
    assert FeatureStore.open(out).meta["preprocessing"]["precision"] == "bf16"
