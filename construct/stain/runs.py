"""Where a run's stain reference lives, and the tiles an input's stain is estimated from.

`construct extract` records the reference of the split's tiles in the store (attribute STORE_KEY);
`construct train` copies the train store's into the run config (RUN_KEY); `construct distill` records the
student's own (from its training tiles) and its teacher's (TEACHER_KEY). A run made before this records
none: its reference is computed from the training tiles its store names, when they are still there.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from construct.data.dataset import IMAGE_SIZE, read_image
from construct.errors import ConstructError
from construct.runs import RUN_CONFIG, read_run_config
from construct.stain.estimate import estimate_images
from construct.stain.normalize import StainNormalizer, fit_normalizer
from construct.stain.reference import DegenerateStain, StainReference

STORE_KEY = "stain_reference"
RUN_KEY = "stain_reference"
TEACHER_KEY = "teacher_stain_reference"
SAMPLE_TILES = 64  # tiles an input's (or a training set's) stain is estimated from, evenly spread
BATCH = 16
log = logging.getLogger("construct.stain")

if TYPE_CHECKING:
    from construct.store import FeatureStore


def spread(items: Sequence, n: int = SAMPLE_TILES) -> list:
    """At most `n` items evenly spread over `items` (deterministic: the same input, the same sample)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def _readable(path: Path, size: int | None) -> np.ndarray | None:
    try:
        return read_image(path, size)
    except ConstructError:
        return None  # the inference reports a bad tile where it meets it, after the tiles before it


def file_batches(paths: Sequence[Path], size: int | None = None) -> Iterator[torch.Tensor]:
    """Image files as (B, 3, H, W) batches in [0, 1], leaving out files that cannot be read."""
    for i in range(0, len(paths), BATCH):
        tiles = [t for t in (_readable(p, size) for p in paths[i:i + BATCH]) if t is not None]
        if tiles:
            yield torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2).float().div_(255.0)


def reference_of_files(paths: Sequence[Path], source: str, size: int = IMAGE_SIZE) -> StainReference | None:
    """The reference of a sample of these `size` px tiles (others are left out), or None (with a warning)
    when they cannot give one. Computed once per process for the same tiles (distill's targets and its
    run record both need its training split's)."""
    return _reference_of_files(tuple(spread(paths)), source, size)


@functools.lru_cache(maxsize=4)
def _reference_of_files(sample: tuple[Path, ...], source: str, size: int) -> StainReference | None:
    try:
        return estimate_images(file_batches(sample, size), source)
    except DegenerateStain as e:
        log.warning("warning: %s: no stain reference (%s)", source, e)
        return None


def _parse(d: dict | None, where: str) -> StainReference | None:
    if d is None:
        return None
    try:
        return StainReference.from_dict(d)
    except ConstructError as e:
        log.warning("warning: %s: %s; ignored", where, e)
        return None


def store_reference(store: FeatureStore) -> StainReference | None:
    """A store's recorded reference or, for a store made before references, one computed from the
    tiles it names (None when they are gone)."""
    recorded = _parse(store.meta.get(STORE_KEY), str(store.path))
    if recorded is not None:
        return recorded
    paths = store.image_paths
    if not paths or not all(p.is_file() for p in spread(paths)):
        return None
    size = int(store.meta["preprocessing"].get("tile_size", IMAGE_SIZE))
    return reference_of_files(paths, f"{store.split} tiles of {store.path}", size)


def run_reference(run: Path, meta: dict) -> StainReference | None:
    """The reference a run's inputs are normalised to: recorded in its config, else its store's, else
    (students) its teacher's. None when nothing gives one."""
    recorded = _parse(meta.get(RUN_KEY), f"{run}/config.json")
    if recorded is not None:
        return recorded
    store = meta.get("store", {}).get("path")
    if store is not None and Path(store).exists():
        from construct.store import FeatureStore

        try:
            found = store_reference(FeatureStore.open(store, require_complete=False))
        except ConstructError:
            found = None
        if found is not None:
            return found
    return _parse(meta.get(TEACHER_KEY), f"{run}/config.json")


def reference_of_run(run: Path) -> StainReference | None:
    """`run_reference` of a run folder, resolved once per process for as long as its config.json is
    unchanged: a batch of slides or folders (and a run without a recorded reference, whose reference is
    estimated from its training tiles) pays for it once."""
    config = Path(run).resolve() / RUN_CONFIG
    return _reference_of_run(config.parent, config.stat().st_mtime_ns if config.is_file() else None)


@functools.lru_cache(maxsize=16)
def _reference_of_run(run: Path, config_stamp: int | None) -> StainReference | None:
    return run_reference(run, read_run_config(run))


def fit_input(method: str, run: Path | None, stain: Iterable[torch.Tensor] | StainReference,
              source: str) -> tuple[StainNormalizer | None, dict]:
    """The normaliser of one input (a split, a folder, a slide: `stain` is its estimate, or batches of a
    sample of its tiles to estimate it from) to the reference of `run` (None: no run, no normalisation),
    and its record for the outputs; see `fit_normalizer`."""
    if run is None:
        method = "none"
    reference = reference_of_run(Path(run)) if method != "none" else None
    return fit_normalizer(method, reference, stain, source)
