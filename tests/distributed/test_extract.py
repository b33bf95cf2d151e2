"""`torchrun -m construct extract`: two processes write the store one process writes, and a killed rank's
rows are done on the next run, once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.store import FeatureStore
from extract.helpers import assert_same_store  # tests/ is on sys.path (pytest rootdir-relative packages)

from .helpers import N_TRAIN, SHARD_ROWS, TIMEOUT_S, env, extract_args, run, torchrun


def reference(data, out, **kw) -> Path:
    """The single-process store, with the settings the command line uses."""
    extract(ExtractConfig(data=data, out=out, conch="random-tiny", segformer="random-tiny", batch_size=4, workers=0,
                          **kw), progress=False)
    return out


def test_two_processes_write_the_single_process_store(synth_data, tmp_path):
    # 80 rows: shards of 32, 32 and 16, so rank 0 takes two shards (one partial) and rank 1 one.
    want = reference(synth_data, tmp_path / "one.zarr", limit=80)
    got = tmp_path / "two.zarr"
    done = run(torchrun(*extract_args(synth_data, got, "--limit", "80")))
    assert done.stdout.count("store:") == 1, done.stdout  # rank 0 reports for both
    assert "80 rows; extracted 80 now" in done.stdout
    assert done.stderr.count("random backbone weights") == 1
    assert_same_store(got, want)


def shard_files(store: Path, shards: set[int]) -> dict[str, tuple[bytes, int]]:
    """Bytes and modification time of every file holding rows of the given shards (Zarr keys c/<shard>/...)."""
    out = {}
    for p in store.rglob("*"):
        parts = p.relative_to(store).parts
        if p.is_file() and "c" in parts[:-1] and int(parts[parts.index("c") + 1]) in shards:
            out[str(p.relative_to(store))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


KILL_SCRIPT = Path(__file__).resolve().parents[1] / "kill_after.py"


def test_a_killed_rank_is_redone_on_resume_once(synth_data, tmp_path):
    want = reference(synth_data, tmp_path / "one.zarr")
    out = tmp_path / "killed.zarr"
    # Rank 1 (shards 2 and 3 of 4) kills itself once it has written its first shard; torchrun then stops
    # rank 0, wherever it is in its own two.
    agent = subprocess.run(torchrun(*extract_args(synth_data, out), program=(KILL_SCRIPT, "shard", "1", "1")),
                           env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert agent.returncode != 0, "the run finished although rank 1 was to kill itself"
    partial = FeatureStore.open(out, require_complete=False)
    done, n_done = partial.done_mask(), partial.n_done
    assert 0 < n_done < N_TRAIN and n_done % SHARD_ROWS == 0  # whole shards only
    done_shards = {a // SHARD_ROWS for a, b in partial.shards() if done[a:b].all()}
    assert 2 in done_shards and 3 not in done_shards  # rank 1's first shard, written before its kill
    kept = shard_files(out, done_shards)
    assert kept

    again = run(torchrun(*extract_args(synth_data, out)))
    assert f"{N_TRAIN} rows; extracted {N_TRAIN - n_done} now" in again.stdout  # only the missing rows
    assert shard_files(out, done_shards) == kept  # the rows done before were not written again
    assert FeatureStore.open(out).is_complete
    assert_same_store(out, want)  # no row lost, every value the single process's


@pytest.mark.parametrize("n", [0, 1, 5, 9, 10, 33])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_parts_cover_each_item_once_and_balanced(n, world_size):
    from construct.distributed import World

    parts = [World(r, world_size).part(n) for r in range(world_size)]
    items = [i for p in parts for i in range(n)[p]]
    assert items == list(range(n))  # contiguous, in rank order, nothing twice
    sizes = [len(range(n)[p]) for p in parts]
    assert max(sizes) - min(sizes) <= 1
