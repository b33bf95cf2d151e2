"""The feature store: one Zarr v3 group per split, the contract between `extract` and `train`.

Per-row arrays are chunked one image per chunk (fastest random batch reads) and sharded by
`shard_rows` images per file (sane file counts at 23k+ images). Writers always write whole shards,
and a shard's rows are marked done only after its data is written, so a killed run loses at most
the shards in flight and a resumed run rewrites exactly those.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from construct import __version__
from construct.backbones.recipe import BackboneRecipe
from construct.data.classes import ClassSet
from construct.errors import ConstructError
from construct.store.in_memory import read_whole_if_fits
from construct.store.quantize import dequantize_int8, quantize_int8

STORE_FORMAT = "construct-feature-store"
STORE_FORMAT_VERSION = 1
STORE_DTYPES = ("float16", "int8")
SCALE_SUFFIX = "__scale"
DONE = "done"
FILE_SIZES = "file_sizes"
# Arrays that hold activations and obey --store-dtype; the feature axis used by int8 scales.
_FEATURE_AXIS = {"conch": -1, "seg": 1}


@dataclass(frozen=True)
class StoreLayout:
    """Which taps a store holds, at which dtype and sharding. Part of the resume compatibility check."""

    conch_taps: tuple[str, ...] = ("conch_b3", "conch_b6", "conch_b9", "conch_b12")
    seg_taps: tuple[str, ...] = ("seg_s3",)
    keep_cls: bool = True
    store_dtype: str = "float16"
    shard_rows: int = 32

    def feature_arrays(self) -> tuple[str, ...]:
        return self.conch_taps + self.seg_taps

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> StoreLayout:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@dataclass
class StoreSpec:
    """Everything needed to create a store before any row is extracted."""

    split: str
    image_ids: list[str]
    rel_paths: list[str]
    data_root: str
    classes: ClassSet
    backbones: dict[str, BackboneRecipe]
    layout: StoreLayout
    shapes: dict[str, tuple[int, ...]]  # per-row shape of every row array (features, cls, embedding, mask)
    text_embeddings: np.ndarray  # (C, E) float32
    contrastive_head: dict[str, np.ndarray]
    dataset_fingerprint: str
    preprocessing: dict
    config: dict = field(default_factory=dict)
    labels: np.ndarray | None = None  # (N, C) known up front (train); else filled from masks per row
    # Byte size of each row's image file. Checked on resume for the rows already extracted only, so a
    # tile that failed (e.g. truncated) can be fixed and the run resumed.
    file_sizes: Sequence[int] | None = None

    def compat(self) -> dict:
        """The settings that decide the stored values: resuming with any of them changed is refused."""
        return {
            "format_version": STORE_FORMAT_VERSION,
            "split": self.split,
            "classes": self.classes.to_dict(),
            "backbones": {k: r.to_dict() for k, r in sorted(self.backbones.items())},
            "layout": self.layout.to_dict(),
            "dataset_fingerprint": self.dataset_fingerprint,
            "preprocessing": self.preprocessing,
        }


def dataset_fingerprint(rel_paths: Sequence[str]) -> str:
    """sha256 over the rows' relative paths in order (file sizes are checked per row: `file_sizes`)."""
    h = hashlib.sha256()
    for p in rel_paths:
        h.update(f"{p}\n".encode())
    return h.hexdigest()


def _is_our_store(path: Path) -> bool:
    meta = path / "zarr.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("format") == STORE_FORMAT
    except (ValueError, OSError):
        return False


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}")
    return out


def _take(arr, rows: np.ndarray) -> np.ndarray:
    """arr[rows] for sorted rows, one slice per run of consecutive rows. Zarr 3.1's orthogonal selection
    (`oindex`) of rows of a sharded array is 5-40x slower than these plain slices (benchmarks/README.md)."""
    if rows.size == 0:
        return arr[0:0]
    runs = np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1)
    return np.concatenate([arr[int(r[0]): int(r[-1]) + 1] for r in runs])


class FeatureStore:
    """Read/write access to one split's features. Use `create`, `open` or `open_or_create`."""

    def __init__(self, path: Path, group, mode: str):
        self.path = Path(path)
        self._group = group
        self.mode = mode
        self.meta: dict = dict(group.attrs)
        self.layout = StoreLayout.from_dict(self.meta["layout"])
        self.classes = ClassSet.from_dict(self.meta["classes"])
        self.recipes = {k: BackboneRecipe.from_dict(v) for k, v in self.meta["backbones"].items()}
        self._cache: dict[str, np.ndarray] = {}
        self._arrays: dict = {}

    # ---- creation / opening -------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, spec: StoreSpec) -> FeatureStore:
        """Create all arrays and metadata in a sibling temp folder, then rename: never half a store."""
        import zarr
        from zarr.codecs import ZstdCodec

        path = Path(path)
        tmp = path.with_name(path.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        n = len(spec.image_ids)
        s = spec.layout.shard_rows
        g = zarr.open_group(str(tmp), mode="w-", zarr_format=3)

        def row_array(name: str, shape: tuple[int, ...], dtype: str, compress: bool) -> None:
            g.create_array(name, shape=(n, *shape), chunks=(1, *shape), shards=(s, *shape), dtype=dtype,
                           compressors=ZstdCodec(level=3) if compress else None, fill_value=0)

        quantized = spec.layout.store_dtype == "int8"
        for name in spec.layout.feature_arrays():
            shape = spec.shapes[name]
            row_array(name, shape, spec.layout.store_dtype, compress=False)
            if quantized:
                axis = _FEATURE_AXIS[name.split("_")[0]] % (len(shape) + 1) - 1
                row_array(name + SCALE_SUFFIX, tuple(1 if i == axis else d for i, d in enumerate(shape)), "float32", False)
        for name in ("conch_cls", "conch_embedding", "mask"):
            if name in spec.shapes and (name != "conch_cls" or spec.layout.keep_cls):
                dtype = "uint8" if name == "mask" else ("float16" if name == "conch_cls" else "float32")
                row_array(name, spec.shapes[name], dtype, compress=name == "mask")
        c = len(spec.classes)
        labels = g.create_array("labels", shape=(n, c), chunks=(s, c), dtype="uint8", fill_value=0)
        if spec.labels is not None:
            labels[:] = spec.labels
        g.create_array(DONE, shape=(n,), chunks=(s,), dtype="uint8", fill_value=0)
        if spec.file_sizes is not None:
            g.create_array(FILE_SIZES, shape=(n,), chunks=(s,), dtype="int64", fill_value=0)[:] = np.asarray(spec.file_sizes)
        g.create_array("image_ids", shape=(n,), dtype=str)[:] = np.array(spec.image_ids, dtype=str)
        g.create_array("rel_paths", shape=(n,), dtype=str)[:] = np.array(spec.rel_paths, dtype=str)
        g.create_array("text_embeddings", shape=spec.text_embeddings.shape, dtype="float32")[:] = spec.text_embeddings
        for k, v in spec.contrastive_head.items():
            g.create_array(f"contrastive_head/{k}", shape=v.shape, dtype="float32")[...] = v
        g.attrs.update({
            "format": STORE_FORMAT,
            "package_version": __version__,
            "n_rows": n,
            "data_root": spec.data_root,
            "labels_from_names": spec.labels is not None,
            "random_weights": any(r.random_weights for r in spec.backbones.values()),
            "config": spec.config,
            "compat": spec.compat(),
            **spec.compat(),
        })
        if path.exists():
            path.rmdir()  # only ever an empty folder here: open_or_create checked
        tmp.rename(path)
        return cls.open(path, mode="r+", require_complete=False)

    @classmethod
    def open(cls, path: Path | str, mode: str = "r", require_complete: bool = True) -> FeatureStore:
        import zarr

        path = Path(path)
        if not path.exists():
            raise ConstructError(f"{path}: feature store not found (create it with `construct extract`)")
        if not _is_our_store(path):
            raise ConstructError(f"{path}: not a construct feature store")
        g = zarr.open_group(str(path), mode=mode, zarr_format=3)
        version = g.attrs.get("format_version")
        if version != STORE_FORMAT_VERSION:
            raise ConstructError(
                f"{path}: feature store format version {version}, this construct reads version "
                f"{STORE_FORMAT_VERSION}; re-extract it with this version"
            )
        store = cls(path, g, mode)
        if require_complete:
            store.require_complete()
        return store

    @classmethod
    def open_or_create(cls, path: Path | str, spec: StoreSpec) -> FeatureStore:
        """Resume a store built with the same settings, create a new one, or refuse in one line."""
        path = Path(path)
        if path.is_file() or (path.is_dir() and any(path.iterdir()) and not _is_our_store(path)):
            raise ConstructError(f"{path}: exists and is not a construct feature store; choose another --out")
        if not _is_our_store(path):
            return cls.create(path, spec)
        store = cls.open(path, mode="r+", require_complete=False)
        differ = _diff(store.meta["compat"], spec.compat())
        if differ:
            raise ConstructError(
                f"{path}: was built with different settings ({', '.join(differ[:4])} differ); "
                f"refusing to mix features: choose another --out or delete it"
            )
        store._check_file_sizes(spec)
        return store

    def _check_file_sizes(self, spec: StoreSpec) -> None:
        """Refuse to resume when an image already extracted has changed; record the current sizes of
        the rows still to do (a file fixed after a failed run is welcome)."""
        if spec.file_sizes is None or not self.has(FILE_SIZES):
            return
        recorded = np.asarray(self._group[FILE_SIZES][...])
        current = np.asarray(spec.file_sizes, dtype=np.int64)
        done = self.done_mask()
        changed = np.flatnonzero(done & (recorded != current))
        if changed.size:
            first = spec.rel_paths[changed[0]]
            raise ConstructError(
                f"{self.path}: {changed.size} image file(s) changed since their features were extracted "
                f"(e.g. {first}); refusing to mix features: choose another --out or delete it"
            )
        if (recorded != current).any():
            self._group[FILE_SIZES][:] = current

    # ---- metadata -----------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        return int(self.meta["n_rows"])

    @property
    def split(self) -> str:
        return str(self.meta["split"])

    @property
    def random_weights(self) -> bool:
        return bool(self.meta.get("random_weights", False))

    def _small(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = np.asarray(self._group[name][...])
        return self._cache[name]

    @property
    def image_ids(self) -> list[str]:
        return [str(x) for x in self._small("image_ids")]

    def record(self, key: str, value) -> None:
        """Add (or replace) one JSON metadata attribute that is no part of the resume check."""
        self._group.attrs[key] = value
        self.meta[key] = value

    @property
    def image_paths(self) -> list[Path]:
        root = Path(self.meta["data_root"])
        return [root / str(p) for p in self._small("rel_paths")]

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self._group["labels"][...])

    @property
    def text_embeddings(self) -> np.ndarray:
        return self._small("text_embeddings").astype(np.float32)

    def contrastive_head_state(self) -> dict[str, np.ndarray]:
        g = self._group["contrastive_head"]
        return {k: np.asarray(g[k][...]) for k in g.array_keys()}

    def has(self, name: str) -> bool:
        return name in self._group

    def shape(self, name: str) -> tuple[int, ...]:
        """Per-row shape of a row array."""
        return tuple(self._group[name].shape[1:])

    # ---- completion -----------------------------------------------------------------------
    def done_mask(self) -> np.ndarray:
        return np.asarray(self._group[DONE][...]).astype(bool)

    @property
    def n_done(self) -> int:
        return int(self.done_mask().sum())

    @property
    def is_complete(self) -> bool:
        return self.n_done == self.n_rows

    def require_complete(self) -> None:
        if not self.is_complete:
            raise ConstructError(
                f"{self.path}: feature store is incomplete ({self.n_done}/{self.n_rows} rows extracted); "
                f"re-run the same `construct extract` command to finish it"
            )

    def shards(self) -> list[tuple[int, int]]:
        s = self.layout.shard_rows
        return [(a, min(a + s, self.n_rows)) for a in range(0, self.n_rows, s)]

    def pending_shards(self) -> list[tuple[int, int]]:
        done = self.done_mask()
        return [(a, b) for a, b in self.shards() if not done[a:b].all()]

    # ---- row I/O ---------------------------------------------------------------------------
    def write_shard(self, start: int, stop: int, arrays: dict[str, np.ndarray]) -> None:
        """Write whole-shard rows [start, stop) of every given array, then mark them done."""
        for name, value in arrays.items():
            if name in self.layout.feature_arrays() and self.layout.store_dtype == "int8":
                axis = _FEATURE_AXIS[name.split("_")[0]]
                q, scale = quantize_int8(value, axis=axis)
                self._group[name][start:stop] = q
                self._group[name + SCALE_SUFFIX][start:stop] = scale
            elif name == "labels":
                self._group["labels"][start:stop] = value.astype(np.uint8)
            else:
                arr = self._group[name]
                arr[start:stop] = value.astype(arr.dtype)
        self._group[DONE][start:stop] = 1

    def read(self, name: str, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        """Rows of one array as float32 (decoded from int8 when stored so), in the order given."""
        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        data = _take(self._array(name), sorted_rows)
        if name in self.layout.feature_arrays() and self.layout.store_dtype == "int8":
            data = dequantize_int8(data, _take(self._array(name + SCALE_SUFFIX), sorted_rows))
        out = np.empty_like(data, dtype=np.float32 if data.dtype.kind == "f" else data.dtype)
        out[order] = data
        return out

    def keep_in_memory(self, names: Sequence[str], budget_bytes: int) -> bool:
        """Read the named row arrays (and their int8 scales) whole into RAM when they fit in the budget;
        later `read`s slice them there (store/in_memory.py says why)."""
        names = [n for name in names for n in (name, name + SCALE_SUFFIX) if self.has(n)]
        arrays = read_whole_if_fits(self._group, names, budget_bytes)
        self._arrays.update(arrays or {})
        return arrays is not None

    def _array(self, name: str):
        """An array's handle, kept: opening one reads its metadata from disk (about 1 ms, per batch and array)."""
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def read_batch(self, rows: Sequence[int] | np.ndarray, names: Sequence[str]) -> dict[str, np.ndarray]:
        out = {name: self.read(name, rows) for name in names}
        out["labels"] = self.labels_rows(rows)
        return out

    def labels_rows(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        return self._small("labels")[np.asarray(rows, dtype=np.int64)]

    def refresh(self) -> None:
        """Forget cached small arrays and array handles (after writes)."""
        self._cache.clear()
        self._arrays.clear()
