"""The one inference pipeline: tile source → predictor → (gate, CRF or argmax) → sinks.

refine, distill's teacher targets and slide are arrangements of these parts (docs/design.md section 5).
The predictor runs in this process in batches; with `crf` and `workers` > 0 each tile's Dense CRF runs
in a process pool, overlapping the next forward and using the other cores. Sinks are written in this
process, in source order, so a sink needs no locking and a resumed run sees a prefix of the tiles done.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from construct.data.loader import images_to_tensor
from construct.data.sources import Tile, TileSource
from construct.errors import ConstructError
from construct.inference.crf import crf_refine
from construct.inference.parts import Predictor, Sink

LABEL_GATES = ("labels", "gt")  # gates fed by the tiles' own labels
# Tiles queued for the CRF pool per worker before the forward waits (bounds memory: ~1 MB a tile).
INFLIGHT_PER_WORKER = 4
RESUME_HINT = " (results written so far are kept: fix or remove the file and re-run the same command to resume)"


@dataclass
class InferenceStats:
    n_written: int
    seconds: float  # forward + CRF + writing


def tile_labels(tiles: list[Tile], gate: str) -> torch.Tensor | None:
    """(B, C) labels for the `labels`/`gt` gates, None for the others."""
    if gate not in LABEL_GATES:
        return None
    missing = [t.stem for t in tiles if t.labels is None]
    if missing:
        raise ValueError(f"gate {gate!r} needs labels, tile {missing[0]} has none")
    return torch.from_numpy(np.stack([t.labels for t in tiles]))


def run_inference(
    source: TileSource, predictor: Predictor, sinks: list[Sink], gate: str, crf: bool = False,
    batch_size: int = 8, workers: int = 0, pred_threshold: float = 0.5, progress: bool = True,
    total: int | None = None, desc: str = "infer",
) -> InferenceStats:
    """Score every tile no sink has yet (a tile is done when every sink says so), label it by Dense CRF
    (`crf`) or argmax, and hand it to each sink; then close the sinks. `total` (the tiles left to do)
    only sizes the progress bar. A source error is re-raised after the tiles already scored are written."""
    use_pool = crf and workers > 0
    bar = tqdm(total=len(source) if total is None else total, unit="tile", desc=desc, disable=not progress,
               dynamic_ncols=True)
    inflight: deque[tuple[Tile, np.ndarray, Future | np.ndarray]] = deque()
    max_inflight = INFLIGHT_PER_WORKER * max(workers, 1) + batch_size
    n_written = 0

    def harvest(block_until: int) -> None:
        """Write finished tiles in order; wait while more than `block_until` are queued."""
        nonlocal n_written
        while inflight and (not isinstance(inflight[0][2], Future) or inflight[0][2].done()
                            or len(inflight) > block_until):
            tile, scores, labels = inflight.popleft()
            labels = labels.result() if isinstance(labels, Future) else labels  # re-raises a failed CRF
            for sink in sinks:
                sink.write(tile, scores, labels.astype(np.uint8))
            n_written += 1
            bar.update(1)

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) if use_pool else None
    start = time.perf_counter()
    try:
        batches = source.batches(batch_size, skip=lambda stem: all(s.done(stem) for s in sinks))
        while True:
            try:
                tiles = next(batches)
            except StopIteration:
                break
            except ConstructError as e:
                harvest(0)
                raise ConstructError(str(e) + RESUME_HINT) from e
            images = images_to_tensor(torch.from_numpy(np.stack([t.image for t in tiles])), predictor.device)
            scores, _ = predictor.scores(images, gate, tile_labels(tiles, gate), pred_threshold)
            scores = scores.float().cpu().numpy()
            for tile, s in zip(tiles, scores):
                if pool is not None:
                    inflight.append((tile, s, pool.submit(crf_refine, tile.image, s)))
                else:
                    inflight.append((tile, s, crf_refine(tile.image, s) if crf else s.argmax(axis=0)))
            harvest(max_inflight)
        harvest(0)
        for sink in sinks:
            sink.close()
    except BaseException:
        for _, _, f in inflight:
            if isinstance(f, Future):
                f.cancel()
        raise
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return InferenceStats(n_written, time.perf_counter() - start)
