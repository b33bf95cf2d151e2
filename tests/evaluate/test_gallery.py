"""faiss nearest-tile retrieval for the prototype gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from construct.data.classes import BCSS
from construct.errors import ConstructError
from construct.evaluate.gallery import EMBEDDING_ARRAY, nearest_tiles, nearest_tiles_chunked, prototype_gallery

DIM = 512
N_TILES = 9000  # more than one default chunk of 4096 rows


def planted(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Random tile embeddings with, for each prototype, one tile planted (scaled) on it."""
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((N_TILES, DIM)).astype(np.float32)
    protos = rng.standard_normal((len(BCSS), DIM)).astype(np.float32)
    rows = [17, 4100, 8999, 5000]  # in different chunks, one on the very last row
    for c, row in enumerate(rows):
        emb[row] = 3.0 * protos[c]  # scale must not matter: cosine similarity
    return emb, protos, rows


def test_planted_tile_is_nearest():
    emb, protos, rows = planted()
    ids = nearest_tiles(emb, protos, k=5)
    assert ids.shape == (len(BCSS), 5)
    assert ids[:, 0].tolist() == rows


@pytest.mark.parametrize("chunk_rows", [1000, 4096, N_TILES])
def test_chunking_does_not_change_the_answer(chunk_rows):
    emb, protos, _ = planted(seed=1)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    q = protos / np.linalg.norm(protos, axis=1, keepdims=True)
    brute = np.argsort(-(q @ unit.T), axis=1)[:, :10]
    np.testing.assert_array_equal(nearest_tiles(emb, protos, k=10, chunk_rows=chunk_rows), brute)


def test_second_nearest_ranked_second():
    emb, protos, rows = planted(seed=2)
    emb[123] = protos[0] + 0.3 * emb[123]  # close to prototype 0, but less than the planted copy
    assert nearest_tiles(emb, protos, k=2)[0].tolist() == [rows[0], 123]


def test_similarities_are_cosines():
    emb, protos, rows = planted()
    sims, _ = nearest_tiles_chunked([emb], protos, k=1)
    np.testing.assert_allclose(sims[:, 0], 1.0, atol=1e-5)


def test_dimension_mismatch():
    with pytest.raises(ValueError, match="512"):
        nearest_tiles(np.ones((4, 256), np.float32), np.ones((2, 512), np.float32), k=1)


def test_gallery_reads_the_store_in_chunks_and_names_tiles(make_store):
    emb, protos, rows = planted()
    store = make_store(emb, text=protos)
    gallery = prototype_gallery(store, k=3, chunk_rows=2048)
    assert [g.class_name for g in gallery] == BCSS.names
    assert [g.image_ids[0] for g in gallery] == [f"tile{r}" for r in rows]
    assert gallery[0].image_paths[0] == Path(f"/train/tile{rows[0]}.png")
    assert all(name == EMBEDDING_ARRAY and n <= 2048 for name, n in store.reads)
    assert sum(n for _, n in store.reads) == N_TILES


def test_gallery_with_learned_prototypes(make_store):
    emb, protos, rows = planted()
    store = make_store(emb, text=np.zeros_like(protos))
    gallery = prototype_gallery(store, k=1, prototypes=protos[::-1].copy())
    assert [g.image_ids[0] for g in gallery] == [f"tile{r}" for r in rows[::-1]]


def test_gallery_k_clamped_to_store_size(make_store):
    emb, protos, _ = planted()
    store = make_store(emb[:2], text=protos)
    assert all(len(g.image_ids) == 2 for g in prototype_gallery(store, k=8))


def test_gallery_rejects_wrong_prototypes(make_store):
    emb, protos, _ = planted()
    with pytest.raises(ConstructError, match="one row per class"):
        prototype_gallery(make_store(emb, protos), k=1, prototypes=protos[:2])
    with pytest.raises(ConstructError, match="256"):
        prototype_gallery(make_store(emb, protos), k=1, prototypes=protos[:, :256])
