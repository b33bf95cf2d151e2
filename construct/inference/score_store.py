"""The score store: a Zarr v3 group of per-tile uint8 scores and label maps (distill's teacher targets).

Arrays, one row per tile of a fixed list of stems: `scores` (N, C + 1, H, W) uint8 (score x 255, background
last), `labels` (N, H, W) uint8 channel indices (after the CRF), `gate` (N, C) uint8 and `done` (N,).
Rows are chunked one tile per chunk and sharded `shard_rows` to a file. The sink buffers a shard's tiles
and writes them together, then marks them done, so a killed run loses at most the shard in flight and a
resumed run recomputes exactly those tiles. `attrs["compat"]` records what the scores depend on
(model fingerprint, data fingerprint, settings): a store is reused only by the same compat.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from construct import __version__
from construct.data.sources import Tile
from construct.errors import ConstructError
from construct.store.in_memory import read_whole_if_fits

READ_ARRAYS = ("scores", "labels", "gate")
SCORE_STORE_FORMAT = "construct-score-store"
SCORE_STORE_VERSION = 1
SHARD_ROWS = 32  # ~8 MB of 5-channel 224 px scores per shard file
QUANT = 255.0


def quantize_scores(scores: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(scores * QUANT), 0, QUANT).astype(np.uint8)


def dequantize_scores(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / QUANT


def _is_score_store(path: Path) -> bool:
    meta = path / "zarr.json"
    try:
        return json.loads(meta.read_text()).get("attributes", {}).get("format") == SCORE_STORE_FORMAT
    except (OSError, ValueError):
        return False


class ScoreStore:
    def __init__(self, path: Path, group):
        self.path = path
        self.group = group
        self.stems: list[str] = list(group.attrs["stems"])
        self.row_of = {s: i for i, s in enumerate(self.stems)}
        self.compat: dict = dict(group.attrs["compat"])
        self._in_memory: dict[str, np.ndarray] = {}

    @classmethod
    def create(cls, path: Path, stems: list[str], n_classes: int, tile_size: int, compat: dict) -> ScoreStore:
        """All arrays made in a sibling temp folder, then renamed: never half a store."""
        import zarr
        from zarr.codecs import ZstdCodec

        tmp = path.with_name(path.name + ".creating")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        g = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        n, s, k = len(stems), SHARD_ROWS, n_classes + 1
        for name, shape in (("scores", (k, tile_size, tile_size)), ("labels", (tile_size, tile_size))):
            g.create_array(name, shape=(n, *shape), chunks=(1, *shape), shards=(s, *shape), dtype="uint8",
                           compressors=ZstdCodec(level=3), fill_value=0)
        g.create_array("gate", shape=(n, n_classes), chunks=(s, n_classes), dtype="uint8", fill_value=0)
        g.create_array("done", shape=(n,), chunks=(s,), dtype="uint8", fill_value=0)
        g.attrs.update({"format": SCORE_STORE_FORMAT, "format_version": SCORE_STORE_VERSION,
                        "package_version": __version__, "stems": list(stems), "compat": compat, "complete": False})
        tmp.rename(path)
        return cls.open(path, mode="r+")

    @classmethod
    def open(cls, path: Path, mode: str = "r") -> ScoreStore:
        import zarr

        path = Path(path)
        if not path.exists():
            raise ConstructError(f"{path}: score store not found")
        if not _is_score_store(path):
            raise ConstructError(f"{path}: not a construct score store")
        g = zarr.open_group(str(path), mode=mode, zarr_format=3)
        if g.attrs.get("format_version") != SCORE_STORE_VERSION:
            raise ConstructError(f"{path}: score store format version {g.attrs.get('format_version')}, this "
                                 f"construct reads version {SCORE_STORE_VERSION}; make it again")
        return cls(path, g)

    @classmethod
    def open_or_create(cls, path: Path, stems: list[str], n_classes: int, tile_size: int,
                       compat: dict) -> ScoreStore:
        """Resume a store made with the same compat, create a new one, or refuse in one line."""
        path = Path(path)
        if path.exists() and not _is_score_store(path):
            raise ConstructError(f"{path}: exists and is not a construct score store; move it away")
        if not path.exists():
            return cls.create(path, stems, n_classes, tile_size, compat)
        store = cls.open(path, mode="r+")
        if store.compat != compat or store.stems != list(stems):
            differ = sorted(k for k in set(store.compat) | set(compat) if store.compat.get(k) != compat.get(k))
            raise ConstructError(f"{path}: holds scores made with other settings "
                                 f"({', '.join(differ) or 'tiles'} differ); delete it to make them again")
        return store

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.group["done"][...]).astype(bool)

    @property
    def complete(self) -> bool:
        return bool(self.group.attrs.get("complete", False))

    def write_rows(self, rows: list[int], scores: np.ndarray, labels: np.ndarray, gate: np.ndarray) -> None:
        """Rows (ascending, within one shard) of data, then their done marks."""
        sel = np.asarray(rows)
        a, b = int(sel[0]), int(sel[-1]) + 1
        if b - a == len(rows):  # contiguous: one region write per array
            self.group["scores"][a:b] = scores
            self.group["labels"][a:b] = labels
            self.group["gate"][a:b] = gate
        else:
            for j, r in enumerate(rows):
                self.group["scores"][r] = scores[j]
                self.group["labels"][r] = labels[j]
                self.group["gate"][r] = gate[j]
        done = np.asarray(self.group["done"][a:b])
        done[sel - a] = 1
        self.group["done"][a:b] = done

    def keep_in_memory(self, budget_bytes: int) -> bool:
        """Read the whole store into RAM when it fits in the budget (store/in_memory.py says why)."""
        self._in_memory = read_whole_if_fits(self.group, READ_ARRAYS, budget_bytes) or {}
        return bool(self._in_memory)

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores uint8, labels, gate) of the given rows."""
        rows = np.asarray(rows)
        if self._in_memory:
            return tuple(self._in_memory[n][rows] for n in READ_ARRAYS)
        return (np.stack([self.group["scores"][int(r)] for r in rows]),
                np.stack([self.group["labels"][int(r)] for r in rows]), self.group["gate"][...][rows])

    def mark_complete(self) -> None:
        if not self.done_mask().all():
            raise ConstructError(f"{self.path}: {int((~self.done_mask()).sum())} tiles still missing")
        self.group.attrs["complete"] = True


class ScoreStoreSink:
    """Writes each tile's quantised scores, labels and gate into a ScoreStore, a shard at a time; `close`
marks the store complete (every tile done)."""

    def __init__(self, store: ScoreStore):
        self.store = store
        self.done_rows = store.done_mask()
        self.buffer: list[tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []

    def done(self, stem: str) -> bool:
        return bool(self.done_rows[self.store.row_of[stem]])

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        row = self.store.row_of[tile.stem]
        if self.buffer and self.buffer[0][0] // SHARD_ROWS != row // SHARD_ROWS:
            self.flush()
        # the tile's image labels when the source has them, else the classes the predictor's gate kept
        gate = (tile.labels if tile.labels is not None
                else scores[:-1].reshape(scores.shape[0] - 1, -1).max(axis=1) > 0).astype(np.uint8)
        self.buffer.append((row, quantize_scores(scores), labels.astype(np.uint8), gate))

    def flush(self) -> None:
        if not self.buffer:
            return
        rows, scores, labels, gate = zip(*self.buffer)
        self.store.write_rows(list(rows), np.stack(scores), np.stack(labels), np.stack(gate))
        self.done_rows[list(rows)] = True
        self.buffer = []

    def close(self) -> None:
        self.flush()
        self.store.mark_complete()
