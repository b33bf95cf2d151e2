"""A store spec with made-up shapes and values: the store is tested without any backbone."""

from __future__ import annotations

import numpy as np

from construct.backbones.recipe import BackboneRecipe
from construct.data.classes import BCSS
from construct.store import StoreLayout, StoreSpec, dataset_fingerprint

N_ROWS = 10
TOKENS, WIDTH = 16, 8
SEG = (6, 4, 4)


def recipe(family: str, spec: str = "random-tiny") -> BackboneRecipe:
    return BackboneRecipe(
        family=family, spec=spec, arch=f"{family}-test", image_size=64, mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25), taps=("a", "b"), fingerprint="f" * 64, random_weights=True,
    )


def make_spec(n: int = N_ROWS, store_dtype: str = "float16", shard_rows: int = 4, with_masks: bool = True,
              labels: bool = False, **overrides) -> StoreSpec:
    rel = [f"img/{i:03d}.png" for i in range(n)]
    shapes = {"conch_b3": (TOKENS, WIDTH), "conch_b12": (TOKENS, WIDTH), "seg_s3": SEG,
              "conch_cls": (WIDTH,), "conch_embedding": (5,)}
    if with_masks:
        shapes["mask"] = (8, 8)
    kw = dict(
        split="valid", image_ids=[f"{i:03d}" for i in range(n)], rel_paths=rel, data_root="/data",
        classes=BCSS, backbones={"conch": recipe("conch"), "segformer": recipe("segformer")},
        layout=StoreLayout(conch_taps=("conch_b3", "conch_b12"), seg_taps=("seg_s3",), store_dtype=store_dtype,
                           shard_rows=shard_rows),
        shapes=shapes, text_embeddings=np.arange(4 * 5, dtype=np.float32).reshape(4, 5),
        contrastive_head={"proj": np.eye(5, dtype=np.float32), "n_head": np.array(1.0, np.float32)},
        dataset_fingerprint=dataset_fingerprint(rel),
        preprocessing={"image_size": 64, "precision": "fp32"}, config={"batch_size": 4},
        labels=(np.arange(n * 4).reshape(n, 4) % 2).astype(np.uint8) if labels else None,
    )
    kw.update(overrides)
    return StoreSpec(**kw)


def shard_arrays(start: int, stop: int, seed: int = 0, with_masks: bool = True) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed + start)
    n = stop - start
    out = {
        "conch_b3": rng.normal(size=(n, TOKENS, WIDTH)).astype(np.float32),
        "conch_b12": rng.normal(size=(n, TOKENS, WIDTH)).astype(np.float32) * 10,
        "seg_s3": rng.normal(size=(n, *SEG)).astype(np.float32),
        "conch_cls": rng.normal(size=(n, WIDTH)).astype(np.float32),
        "conch_embedding": rng.normal(size=(n, 5)).astype(np.float32),
        "labels": rng.integers(0, 2, (n, 4)).astype(np.uint8),
    }
    if with_masks:
        out["mask"] = rng.integers(0, 5, (n, 8, 8)).astype(np.uint8)
    return out
