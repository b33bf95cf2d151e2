"""Prototype gallery: for each class prototype, the training tiles whose CONCH embeddings are nearest.

Cosine similarity via faiss inner product over L2-normalised vectors. The embeddings are streamed in
chunks, each searched on its own and merged in a running top-k heap, so memory stays bounded however
large the training store is.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from construct.errors import ConstructError

CHUNK_ROWS = 4096
EMBEDDING_ARRAY = "conch_embedding"
# Guards the normalisation of an all-zero vector (its similarities become 0, not NaN).
_EPS = 1e-12


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, _EPS))


def nearest_tiles_chunked(
    chunks: Iterable[np.ndarray], prototypes: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, indices), each (C, k), best first; indices count rows across all chunks.

    Rows beyond the number of embeddings seen are index -1 (fewer than k tiles in total).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    queries = _normalised(prototypes)
    dim = queries.shape[1]
    heap = faiss.ResultHeap(len(queries), k, keep_max=True)
    offset = 0
    for chunk in chunks:
        if len(chunk) == 0:
            continue
        x = _normalised(chunk)
        if x.shape[1] != dim:
            raise ValueError(f"embeddings are {x.shape[1]}-d but prototypes are {dim}-d")
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        sims, ids = index.search(queries, min(k, len(x)))
        heap.add_result(sims, ids + offset)
        offset += len(x)
    heap.finalize()
    return heap.D, heap.I


def _row_chunks(embeddings: np.ndarray, chunk_rows: int) -> Iterator[np.ndarray]:
    for start in range(0, len(embeddings), chunk_rows):
        yield embeddings[start : start + chunk_rows]


def nearest_tiles(embeddings: np.ndarray, prototypes: np.ndarray, k: int, chunk_rows: int = CHUNK_ROWS) -> np.ndarray:
    """(C, k) row indices of the k embeddings most cosine-similar to each prototype, best first."""
    return nearest_tiles_chunked(_row_chunks(embeddings, chunk_rows), prototypes, k)[1]


@dataclass(frozen=True)
class GalleryEntry:
    """One prototype and its nearest training tiles, best first."""

    class_name: str
    image_ids: list[str]
    image_paths: list[Path]
    similarities: list[float]


def prototype_gallery(
    store: str | os.PathLike | Any,
    k: int,
    prototypes: np.ndarray | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> list[GalleryEntry]:
    """Nearest training tiles per class prototype, from a train feature store (a path or an open store).

    `prototypes` default to the store's CONCH text embeddings of the class descriptions; a trained run
    may pass its learned prototypes instead (same 512-d joint space).
    """
    if isinstance(store, (str, os.PathLike)):
        # Imported here so that evaluation without a gallery never needs the store's dependencies.
        from construct.store import FeatureStore

        store = FeatureStore.open(store)
    names = store.classes.names
    protos = store.text_embeddings if prototypes is None else np.asarray(prototypes)
    if protos.ndim != 2 or len(protos) != len(names):
        raise ConstructError(f"prototypes have shape {protos.shape}, expected one row per class ({len(names)})")
    n = store.n_rows
    if n == 0:
        raise ConstructError("the feature store has no rows to search for the prototype gallery")
    k = min(k, n)
    chunks = (
        store.read(EMBEDDING_ARRAY, np.arange(start, min(start + chunk_rows, n)))
        for start in range(0, n, chunk_rows)
    )
    try:
        sims, ids = nearest_tiles_chunked(chunks, protos, k)
    except ValueError as e:  # a dimension mismatch between the prototypes and the store
        raise ConstructError(f"prototype gallery: {e}") from e
    return [
        GalleryEntry(
            class_name=name,
            image_ids=[store.image_ids[i] for i in row_ids],
            image_paths=[Path(store.image_paths[i]) for i in row_ids],
            similarities=[float(s) for s in row_sims],
        )
        for name, row_sims, row_ids in zip(names, sims, ids)
    ]
