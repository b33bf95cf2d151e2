"""The Zarr feature store on its own: create/open, completion, row I/O, int8, compatibility checks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from construct import __version__
from construct.errors import ConstructError
from construct.store import FeatureStore, StoreLayout
from construct.store.quantize import dequantize_int8, quantize_int8

from .helpers import N_ROWS, TOKENS, WIDTH, make_spec, recipe, shard_arrays


def fill(store: FeatureStore, shards=None, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the given (default: all) shards; returns the full arrays that were written."""
    written: dict[str, list[np.ndarray]] = {}
    for a, b in shards or store.shards():
        arrays = shard_arrays(a, b, seed)
        store.write_shard(a, b, arrays)
        for k, v in arrays.items():
            written.setdefault(k, []).append(v)
    store.refresh()
    return {k: np.concatenate(v) for k, v in written.items()}


# ---- quantisation ---------------------------------------------------------------------------------
def test_int8_per_token_scales_and_error_bound():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 7, 32)).astype(np.float32) * rng.uniform(0.01, 100, size=(3, 7, 1)).astype(np.float32)
    q, scale = quantize_int8(x, axis=-1)
    assert q.dtype == np.int8 and scale.dtype == np.float32
    assert scale.shape == (3, 7, 1)
    y = dequantize_int8(q, scale)
    # symmetric absmax: error at most half a step, the absmax itself exact up to rounding
    assert np.all(np.abs(y - x) <= scale / 2 + 1e-6 * np.abs(x))
    assert np.abs(q).max() == 127


def test_int8_channel_axis_and_zero_rows():
    x = np.zeros((2, 5, 3, 3), np.float32)
    x[1] = np.random.default_rng(1).normal(size=(5, 3, 3))
    q, scale = quantize_int8(x, axis=1)
    assert scale.shape == (2, 1, 3, 3)
    assert np.all(q[0] == 0) and np.all(scale[0] == 1.0)  # all-zero positions: no division by zero
    assert np.isfinite(dequantize_int8(q, scale)).all()


# ---- create / open ----------------------------------------------------------------------------------
def test_create_then_open_metadata(tmp_path):
    spec = make_spec()
    store = FeatureStore.create(tmp_path / "s.zarr", spec)
    assert not (tmp_path / "s.zarr.creating").exists()
    assert store.n_rows == N_ROWS and store.n_done == 0 and not store.is_complete
    assert store.image_ids == spec.image_ids
    assert [str(p) for p in store.image_paths] == [f"/data/{r}" for r in spec.rel_paths]
    assert store.classes == spec.classes
    assert store.recipes == spec.backbones
    assert store.layout == spec.layout
    assert store.meta["package_version"] == __version__
    assert store.meta["config"] == spec.config
    assert store.random_weights is True
    np.testing.assert_array_equal(store.text_embeddings, spec.text_embeddings)
    head = store.contrastive_head_state()
    assert set(head) == {"proj", "n_head"}
    np.testing.assert_array_equal(head["proj"], np.eye(5))
    assert store.shape("conch_b3") == (16, 8) and store.shape("seg_s3") == (6, 4, 4)
    assert store.has("mask") and store.has("conch_cls") and not store.has("seg_s1")
    assert store.shards() == [(0, 4), (4, 8), (8, 10)]


def test_incomplete_store_refused_until_every_shard_is_written(tmp_path):
    FeatureStore.create(tmp_path / "s.zarr", make_spec())
    with pytest.raises(ConstructError, match=r"incomplete \(0/10 rows"):
        FeatureStore.open(tmp_path / "s.zarr")
    store = FeatureStore.open(tmp_path / "s.zarr", mode="r+", require_complete=False)
    fill(store, shards=[(4, 8)])
    assert store.n_done == 4
    assert store.pending_shards() == [(0, 4), (8, 10)]
    with pytest.raises(ConstructError, match="4/10"):
        FeatureStore.open(tmp_path / "s.zarr")
    fill(store, shards=store.pending_shards())
    assert FeatureStore.open(tmp_path / "s.zarr").is_complete


@pytest.mark.parametrize("rows", [[0, 1, 2], [9, 0, 5, 3], [7], list(range(N_ROWS))[::-1], [3, 8, 3]])
def test_read_returns_rows_in_the_order_asked(tmp_path, rows):
    store = FeatureStore.create(tmp_path / "s.zarr", make_spec())
    data = fill(store)
    store = FeatureStore.open(tmp_path / "s.zarr")
    for name in ("conch_b3", "conch_b12", "seg_s3", "conch_cls", "conch_embedding"):
        got = store.read(name, rows)
        assert got.dtype == np.float32
        tol = 0 if name == "conch_embedding" else 2e-3
        np.testing.assert_allclose(got, data[name][rows], rtol=tol, atol=tol * np.abs(data[name]).max())
    np.testing.assert_array_equal(store.read("mask", rows), data["mask"][rows])
    assert store.read("mask", rows).dtype == np.uint8
    np.testing.assert_array_equal(store.labels_rows(rows), data["labels"][rows])
    batch = store.read_batch(rows, ["conch_b3", "seg_s3"])
    assert set(batch) == {"conch_b3", "seg_s3", "labels"}
    np.testing.assert_array_equal(batch["labels"], data["labels"][rows])


@pytest.mark.parametrize("store_dtype", ["float16", "int8"])
def test_a_store_kept_in_memory_reads_what_disk_reads(tmp_path, store_dtype):
    FeatureStore.create(tmp_path / "s.zarr", make_spec(store_dtype=store_dtype))
    fill(FeatureStore.open(tmp_path / "s.zarr", mode="r+", require_complete=False))
    on_disk, in_memory = FeatureStore.open(tmp_path / "s.zarr"), FeatureStore.open(tmp_path / "s.zarr")
    names = ["conch_b3", "seg_s3", "mask"]
    assert in_memory.keep_in_memory(names, budget_bytes=1 << 20)
    chunks = [d for d in (tmp_path / "s.zarr").glob("*/c")]
    for i, d in enumerate(chunks):  # reads must not touch the disk now
        d.rename(tmp_path / f"moved{i}")
    rows = [9, 0, 5, 3]
    got = {name: in_memory.read(name, rows) for name in names}
    for i, d in enumerate(chunks):
        (tmp_path / f"moved{i}").rename(d)
    for name in names:
        np.testing.assert_array_equal(got[name], on_disk.read(name, rows))


def test_a_store_over_the_memory_budget_keeps_streaming(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", make_spec(store_dtype="int8"))
    fill(store)
    store = FeatureStore.open(tmp_path / "s.zarr")
    per_row = TOKENS * WIDTH + TOKENS * 4  # int8 values + float32 per-token scales
    assert not store.keep_in_memory(["conch_b3"], budget_bytes=N_ROWS * per_row - 1)
    assert store.keep_in_memory(["conch_b3"], budget_bytes=N_ROWS * per_row)


def test_float16_store_is_bit_exact_float16(tmp_path):
    store = FeatureStore.create(tmp_path / "s.zarr", make_spec())
    data = fill(store)
    got = FeatureStore.open(tmp_path / "s.zarr").read("conch_b12", range(N_ROWS))
    np.testing.assert_array_equal(got, data["conch_b12"].astype(np.float16).astype(np.float32))


def test_int8_store_decodes_close_and_is_smaller(tmp_path):
    sizes = {}
    for dtype in ("float16", "int8"):
        store = FeatureStore.create(tmp_path / f"{dtype}.zarr", make_spec(store_dtype=dtype))
        data = fill(store)
        store = FeatureStore.open(tmp_path / f"{dtype}.zarr")
        for name in ("conch_b3", "conch_b12", "seg_s3"):
            got = store.read(name, range(N_ROWS))
            axis = -1 if name.startswith("conch") else 1
            cos = (got * data[name]).sum(axis) / (np.linalg.norm(got, axis=axis) * np.linalg.norm(data[name], axis=axis))
            assert cos.min() >= 0.999, (dtype, name, cos.min())
        sizes[dtype] = sum(f.stat().st_size for f in (tmp_path / f"{dtype}.zarr").rglob("*")
                           if f.is_file() and f.name != "zarr.json" and f.relative_to(tmp_path / f"{dtype}.zarr").parts[0].startswith(("conch_b", "seg_")))
    assert FeatureStore.open(tmp_path / "int8.zarr").has("conch_b3__scale")
    assert sizes["int8"] < sizes["float16"], sizes  # widths are tiny here: scales weigh a lot


def test_labels_known_up_front_are_stored_at_creation(tmp_path):
    spec = make_spec(labels=True)
    store = FeatureStore.create(tmp_path / "s.zarr", spec)
    np.testing.assert_array_equal(store.labels, spec.labels)
    assert store.meta["labels_from_names"] is True


# ---- what is and is not a store -------------------------------------------------------------------
def test_open_refuses_missing_foreign_and_future_stores(tmp_path):
    with pytest.raises(ConstructError, match="not found"):
        FeatureStore.open(tmp_path / "nothing.zarr")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "x.txt").write_text("hello")
    with pytest.raises(ConstructError, match="not a construct feature store"):
        FeatureStore.open(tmp_path / "folder")
    import zarr

    zarr.open_group(str(tmp_path / "other.zarr"), mode="w", zarr_format=3).attrs["format"] = "something-else"
    with pytest.raises(ConstructError, match="not a construct feature store"):
        FeatureStore.open(tmp_path / "other.zarr")
    FeatureStore.create(tmp_path / "s.zarr", make_spec())
    meta = json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())
    meta["attributes"]["format_version"] = 99
    (tmp_path / "s.zarr" / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(ConstructError, match="version 99"):
        FeatureStore.open(tmp_path / "s.zarr", require_complete=False)


def test_open_or_create_refuses_what_is_not_ours(tmp_path):
    f = tmp_path / "file.zarr"
    f.write_text("x")
    with pytest.raises(ConstructError, match="not a construct feature store"):
        FeatureStore.open_or_create(f, make_spec())
    assert f.read_text() == "x"
    d = tmp_path / "full"
    d.mkdir()
    (d / "keep.txt").write_text("x")
    with pytest.raises(ConstructError, match="not a construct feature store"):
        FeatureStore.open_or_create(d, make_spec())
    assert [p.name for p in d.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert FeatureStore.open_or_create(empty, make_spec()).n_rows == N_ROWS


def test_open_or_create_resumes_the_same_settings(tmp_path):
    store = FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec())
    fill(store, shards=[(0, 4)])
    again = FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec())  # metadata round-trips through JSON
    assert again.n_done == 4 and again.pending_shards() == [(4, 8), (8, 10)]


@pytest.mark.parametrize(
    "change, named",
    [
        (dict(store_dtype="int8"), "layout.store_dtype"),
        (dict(shard_rows=5), "layout.shard_rows"),
        (dict(n=9), "dataset_fingerprint"),
        (dict(backbones={"conch": recipe("conch", "random"), "segformer": recipe("segformer")}), "backbones.conch.spec"),
        (dict(split="test"), "split"),
        (dict(preprocessing={"image_size": 64, "precision": "bf16"}), "preprocessing.precision"),
        (dict(layout=StoreLayout(conch_taps=("conch_b3",), seg_taps=("seg_s3",), shard_rows=4)), "layout.conch_taps"),
    ],
)
def test_open_or_create_refuses_other_settings(tmp_path, change, named):
    store = FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec())
    fill(store, shards=[(0, 4)])
    before = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    with pytest.raises(ConstructError, match="different settings") as e:
        FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec(**change))
    assert named in str(e.value) and "\n" not in str(e.value)
    after = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    assert after == before


def test_file_sizes_guard_only_the_rows_already_extracted(tmp_path):
    sizes = [100 + i for i in range(N_ROWS)]
    store = FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec(file_sizes=sizes))
    fill(store, shards=[(0, 4)])
    # a tile not extracted yet may change (e.g. fixed after a failed run): its new size is recorded
    fixed = sizes[:5] + [999] + sizes[6:]
    store = FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec(file_sizes=fixed))
    assert store.pending_shards() == [(4, 8), (8, 10)]
    np.testing.assert_array_equal(store._group["file_sizes"][...], fixed)
    # a tile already extracted may not
    changed = [7] + fixed[1:]
    before = {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()}
    with pytest.raises(ConstructError, match=r"1 image file\(s\) changed since their features were extracted \(e\.g\. img/000\.png\)"):
        FeatureStore.open_or_create(tmp_path / "s.zarr", make_spec(file_sizes=changed))
    assert {p: p.read_bytes() for p in (tmp_path / "s.zarr").rglob("*") if p.is_file()} == before
