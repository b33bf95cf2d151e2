"""Shared settings of the extract tests, and reading whole stores back for equality checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from construct.extract.config import ExtractConfig

N_TRAIN, N_VALID = 12, 6


def tiny_config(data, out, **kw) -> ExtractConfig:
    """random-tiny backbones on the CPU, shards and batches of 4 rows, decoding in the main process."""
    base = dict(data=data, out=out, conch="random-tiny", segformer="random-tiny", batch_size=4, shard_rows=4,
                workers=0, device="cpu")
    return ExtractConfig(**{**base, **kw})


def all_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every array of a store (nested groups included), by path."""
    import zarr

    group = zarr.open_group(str(path), mode="r")
    return {name: np.asarray(node[...]) for name, node in group.members(max_depth=None) if isinstance(node, zarr.Array)}


def attrs(path: Path) -> dict:
    import zarr

    return dict(zarr.open_group(str(path), mode="r").attrs)


def assert_same_store(a: Path, b: Path, same_data_root: bool = True) -> None:
    """Bit-identical arrays and identical metadata (the output path and worker count aside)."""
    xa, xb = all_arrays(a), all_arrays(b)
    assert xa.keys() == xb.keys()
    for name in xa:
        assert xa[name].dtype == xb[name].dtype, name
        np.testing.assert_array_equal(xa[name], xb[name], err_msg=name)
    ma, mb = attrs(a), attrs(b)
    for m in (ma, mb):
        m["config"] = {k: v for k, v in m["config"].items() if k not in ("out", "workers")}
        if not same_data_root:
            m.pop("data_root")
            m["config"].pop("data")
    assert ma == mb


def files_snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(Path(path).rglob("*")) if p.is_file()}


def feature_bytes(path: Path) -> int:
    """Bytes of the activation arrays (features and their int8 scales), metadata files excluded."""
    return sum(p.stat().st_size for p in Path(path).rglob("*")
               if p.is_file() and p.name != "zarr.json" and p.relative_to(path).parts[0].startswith(("conch_b", "seg_s")))
