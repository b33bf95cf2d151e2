"""`construct extract`: run the frozen backbones once over a split and write the feature store."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.registry import create_backbone
from construct.data.classes import load_classes
from construct.data.dataset import IMAGE_SIZE as TILE_SIZE
from construct.data.dataset import Sample, list_split
from construct.data.loader import ShardBatchSampler, TileDataset, images_to_tensor, tile_loader
from construct.distributed import World, session
from construct.errors import ConstructError
from construct.extract.config import ExtractConfig
from construct.runtime import autocast, check_precision, resolve_precision
from construct.store import STORE_DTYPES, FeatureStore, StoreLayout, StoreSpec, dataset_fingerprint

MAX_PENDING_WRITES = 2  # shards queued for the writer thread before the forward waits (bounds memory)


class Backbone(Protocol):
    recipe: BackboneRecipe

    def taps(self, images01: torch.Tensor) -> dict[str, torch.Tensor]: ...


@dataclass
class ExtractResult:
    store: Path
    n_rows: int
    n_extracted: int
    seconds: float
    random_weights: bool

    @property
    def images_per_s(self) -> float:
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0


def _store_spec(cfg: ExtractConfig, samples, classes, conch, segformer) -> StoreSpec:
    root = Path(cfg.data).resolve()
    rel = _rel_paths(root, samples)
    sizes = [s.image_path.stat().st_size for s in samples]
    layout = StoreLayout(
        conch_taps=tuple(f"conch_b{b}" for b in cfg.conch_blocks),
        seg_taps=tuple(f"seg_s{s}" for s in cfg.seg_stages),
        keep_cls=cfg.keep_cls, store_dtype=cfg.store_dtype, shard_rows=cfg.shard_rows,
    )
    # One probe image gives every per-row shape, whatever the backbone widths.
    with torch.no_grad():
        probe = torch.zeros(1, 3, TILE_SIZE, TILE_SIZE, device=conch.mean.device)
        shapes = {k: tuple(v.shape[1:]) for k, v in {**conch.taps(probe), **segformer.taps(probe)}.items()}
    missing = [t for t in layout.feature_arrays() if t not in shapes]
    if missing:
        raise ConstructError(f"requested taps not produced by the backbones: {', '.join(missing)}")
    with_masks = any(s.mask_path is not None for s in samples)
    if with_masks:
        shapes["mask"] = (TILE_SIZE, TILE_SIZE)
    labels = np.stack([s.labels for s in samples]) if all(s.labels is not None for s in samples) else None
    head = {k: v.numpy() for k, v in conch.contrastive_head.export_state().items()}
    return StoreSpec(
        split=cfg.split, image_ids=[s.image_id for s in samples], rel_paths=rel, data_root=str(root),
        classes=classes, backbones={"conch": conch.recipe, "segformer": segformer.recipe}, layout=layout,
        shapes=shapes, text_embeddings=conch.text_embeddings(classes.descriptions).cpu().numpy(),
        contrastive_head=head, dataset_fingerprint=dataset_fingerprint(rel), file_sizes=sizes,
        preprocessing={"image_size": cfg.image_size, "tile_size": TILE_SIZE, "precision": cfg.precision,
                       "mpp": cfg.mpp, "input": "RGB uint8 / 255; CONCH resized (bicubic) to image_size; each backbone's own mean/std"},
        config=cfg.to_dict(), labels=labels,
    )


def _record_stain_reference(store: FeatureStore, samples: list[Sample], cfg: ExtractConfig) -> None:
    """Record the split's stain reference (construct.stain) once, when every row is in (so a resumed run
    records what an uninterrupted one would): the colours a run trained on this store normalises its
    inputs to. Tiles without two clear stains record none (a warning)."""
    from construct.stain.runs import STORE_KEY, reference_of_files

    store.refresh()  # other ranks' rows
    if STORE_KEY not in store.meta and store.is_complete:
        ref = reference_of_files([s.image_path for s in samples], f"{cfg.split} split ({len(samples)} tiles)")
        if ref is not None:
            store.record(STORE_KEY, ref.to_dict())


def _store_precision(path: Path) -> str | None:
    """The precision an existing store was extracted at; None when `path` holds no readable store (the
    store's own checks then say what is wrong)."""
    try:
        return FeatureStore.open(path, require_complete=False).meta["preprocessing"].get("precision")
    except (ConstructError, KeyError):
        return None


def _rel_paths(root: Path, samples: list[Sample]) -> list[str]:
    return [str(s.image_path.resolve().relative_to(root)) for s in samples]


def _check_same_inputs(store: FeatureStore, cfg: ExtractConfig, samples: list[Sample], recipes: dict,
                       rank: int) -> None:
    """A process on another machine must read the same tiles and weights rank 0 created the store from."""
    rel = _rel_paths(Path(cfg.data).resolve(), samples)
    compat = store.meta["compat"]
    if dataset_fingerprint(rel) != compat["dataset_fingerprint"]:
        raise ConstructError(f"rank {rank}: the tiles under {cfg.data} differ from rank 0's (store {store.path}); "
                             f"every machine needs the same dataset")
    if {k: r.to_dict() for k, r in sorted(recipes.items())} != compat["backbones"]:
        raise ConstructError(f"rank {rank}: its backbone weights differ from rank 0's (store {store.path}); "
                             f"every machine needs the same weight files")


def _validate(cfg: ExtractConfig) -> None:
    if not cfg.mpp > 0:
        raise ConstructError(f"--mpp {cfg.mpp}: expected the tiles' micrometres per pixel, above 0")
    if cfg.store_dtype not in STORE_DTYPES:
        raise ConstructError(f"--store-dtype {cfg.store_dtype}: expected one of {', '.join(STORE_DTYPES)}")
    if cfg.batch_size < 1 or cfg.shard_rows < 1:
        raise ConstructError("--batch-size and shard rows must be at least 1")
    if cfg.limit is not None and cfg.limit < 1:
        raise ConstructError("--limit must be at least 1")
    check_precision(cfg.precision)
    if cfg.workers < 0:
        raise ConstructError(f"--workers {cfg.workers}: must be 0 (decode in the main process) or more")
    for flag, values in (("--seg-stages", cfg.seg_stages), ("CONCH blocks", cfg.conch_blocks)):
        if not values or len(set(values)) != len(values):
            raise ConstructError(f"{flag} {','.join(map(str, values))}: expected distinct numbers, at least one")


def extract(
    cfg: ExtractConfig,
    conch: Backbone | None = None,
    segformer: Backbone | None = None,
    progress: bool = True,
) -> ExtractResult:
    """Extract (or resume extracting) one split into `cfg.out_path`. Backbones may be passed in
    (any objects with `recipe` and `taps`; CONCH also `text_embeddings` and `contrastive_head`).

    Under torchrun every process extracts its own slice of the rows still to do, into the one store."""
    _validate(cfg)
    with session(cfg.device) as (world, device):
        return _extract(cfg, conch, segformer, progress and world.is_main, world, device)


def _extract(cfg: ExtractConfig, conch: Backbone | None, segformer: Backbone | None, progress: bool,
             world: World, device: torch.device) -> ExtractResult:
    classes = load_classes(cfg.classes)
    samples = list_split(Path(cfg.data), cfg.split, classes)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    conch = conch or create_backbone("conch", cfg.conch, cfg.image_size)
    segformer = segformer or create_backbone("segformer", cfg.segformer, TILE_SIZE)  # --image-size is CONCH's
    conch.to(device)
    segformer.to(device)
    out = cfg.out_path
    fresh = not (out / "zarr.json").exists()
    # A store being resumed keeps the precision it was started with, unless one is asked for explicitly.
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, device, None if fresh else
                                                               _store_precision(out)))
    # Rank 0 alone creates the store (or checks it and records file sizes) and reads which shards are left;
    # the others open it only then, and all agree on that list, read before any rank writes a row.
    pending = world.on_main(lambda: FeatureStore.open_or_create(
        out, _store_spec(cfg, samples, classes, conch, segformer)).pending_shards())
    store = FeatureStore.open(out, mode="r+", require_complete=False)
    recipes = {"conch": conch.recipe, "segformer": segformer.recipe}
    if not world.is_main:
        _check_same_inputs(store, cfg, samples, recipes, world.rank)
    n_pending = sum(b - a for a, b in pending)
    # Whole shards per rank: Zarr writes to disjoint shard files need no lock, and a shard's rows are
    # marked done together, so the rows of a rank that dies are simply pending on the next run.
    mine = pending[world.part(len(pending))]
    dataset = TileDataset(samples, classes, TILE_SIZE, with_masks=store.has("mask"))
    wanted = set(store.layout.feature_arrays()) | {"conch_embedding"} | ({"conch_cls"} if cfg.keep_cls else set())
    # Only a lone process may remove the store it created: another rank may be writing rows into it.
    removable = fresh and not world.spread
    start = time.perf_counter()
    try:
        _run(store, dataset, mine, wanted, conch, segformer, device, cfg, progress, removable, world)
    except BaseException:
        if removable and store.n_done == 0:
            import shutil

            shutil.rmtree(out, ignore_errors=True)  # nothing was extracted: leave nothing behind
        raise
    world.barrier()  # every rank's rows are written before the run reports
    if world.is_main:
        _record_stain_reference(store, samples, cfg)
    return ExtractResult(out, store.n_rows, n_pending, time.perf_counter() - start,
                         any(r.random_weights for r in recipes.values()))


def _run(store, dataset, shards, wanted, conch, segformer, device, cfg, progress, removable, world) -> None:
    shard_of = {row: (a, b) for a, b in shards for row in range(a, b)}
    buffers: dict[tuple[int, int], list[dict[str, np.ndarray]]] = {}
    writes: list[Future] = []
    desc = f"extract {cfg.split}" + (f" (rank 0 of {world.world_size})" if world.spread else "")
    bar = tqdm(total=sum(b - a for a, b in shards), unit="img", desc=desc, disable=not progress, dynamic_ncols=True)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-writer") as writer:
        for batch in tile_loader(dataset, ShardBatchSampler(shards, cfg.batch_size), cfg.workers):
            if batch["error"]:
                for f in writes:
                    f.result()  # finish the shards already queued, so the hint below is true
                raise ConstructError(batch["error"] + _resume_hint(store, removable))
            images = images_to_tensor(batch["images"], device)
            with torch.no_grad(), autocast(device, cfg.precision):
                feats = {**conch.taps(images), **segformer.taps(images)}
            part = {k: v.float().cpu().numpy() for k, v in feats.items() if k in wanted}
            part["labels"] = batch["labels"].numpy()
            if batch["masks"].numel():
                part["mask"] = batch["masks"].numpy()
            rows = batch["rows"].tolist()
            shard = shard_of[rows[0]]
            buffers.setdefault(shard, []).append(part)
            bar.update(len(rows))
            if rows[-1] == shard[1] - 1:
                parts = buffers.pop(shard)
                arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                while len(writes) >= MAX_PENDING_WRITES:
                    writes.pop(0).result()  # re-raises a failed write here
                writes.append(writer.submit(store.write_shard, shard[0], shard[1], arrays))
        for f in writes:
            f.result()
    bar.close()
    store.refresh()


def _resume_hint(store: FeatureStore, removable: bool) -> str:
    if removable and store.n_done == 0:
        return ""  # nothing to keep: a fresh store is removed again
    return f" (the store {store.path} keeps the rows done so far: fix the file and re-run to resume)"
