"""Teacher targets: what they hold, resumption after an interruption, reuse, and --targets checks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from construct.data.classes import BCSS
from construct.data.dataset import list_split
from construct.data.sources import split_source
from construct.distill.targets import make_targets, open_targets
from construct.errors import ConstructError
from construct.inference import score_store
from construct.inference.head import HeadPredictor
from construct.inference.score_store import ScoreStore
from tiny_runs import quick_config


def _make(tiny_run, tmp_path, conch):
    cfg = quick_config(tiny_run, tmp_path / "student")
    return make_targets(cfg, split_source(tiny_run.data, "train", BCSS, 224), conch=conch, progress=False)


@pytest.fixture(scope="module")
def reference(tiny_run, tmp_path_factory):
    """Uncut targets, copied aside (later tests remake the store in the run folder)."""
    store = _make(tiny_run, tmp_path_factory.mktemp("t"), tiny_run.conch)
    scores, labels, gate = store.read(np.arange(len(store.stems)))
    return store.path, store.stems, scores, labels, gate


def test_targets_hold_scores_crf_masks_and_file_name_labels(tiny_run, reference):
    path, stems, scores, labels, gate = reference
    samples = list_split(tiny_run.data, "train", BCSS)
    assert stems == [s.image_id for s in samples] and path.parent == tiny_run.run / "targets"
    assert scores.shape == (12, 5, 224, 224) and scores.dtype == np.uint8 and labels.max() <= 4
    assert np.array_equal(gate, np.stack([s.labels for s in samples]))
    # gated-out classes have zero scores and never appear in the CRF masks
    for j in range(12):
        for c in np.flatnonzero(gate[j] == 0):
            assert scores[j, c].max() == 0 and not (labels[j] == c).any()


def test_targets_kept_in_memory_read_what_disk_reads(reference):
    path, stems, scores, labels, gate = reference
    store = ScoreStore.open(path)
    assert not store.keep_in_memory(budget_bytes=scores.nbytes)  # the masks and gates do not fit too
    assert store.keep_in_memory(budget_bytes=scores.nbytes + labels.nbytes + gate.nbytes)
    rows = np.array([5, 0, 11, 5])
    for got, want in zip(store.read(rows), (scores, labels, gate)):
        np.testing.assert_array_equal(got, want[rows])


def test_interrupted_targets_resume_to_the_same_store(tiny_run, reference, tmp_path, monkeypatch):
    path, _, scores, labels, gate = reference
    monkeypatch.setattr(score_store, "SHARD_ROWS", 4)
    shutil.rmtree(path)
    calls = {"n": 0}
    real = HeadPredictor.scores

    def dies_on_the_third_batch(self, *a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(HeadPredictor, "scores", dies_on_the_third_batch)
    cfg = quick_config(tiny_run, tmp_path / "student", target_batch_size=4)
    source = split_source(tiny_run.data, "train", BCSS, 224)
    with pytest.raises(KeyboardInterrupt):
        make_targets(cfg, source, conch=tiny_run.conch, progress=False)
    cut = ScoreStore.open(path)
    n_cut = int(cut.done_mask().sum())
    assert not cut.complete and 0 < n_cut < 12
    monkeypatch.setattr(HeadPredictor, "scores", real)
    counted = {"n": 0}

    def counting(self, images01, *a, **kw):
        counted["n"] += images01.shape[0]
        return real(self, images01, *a, **kw)

    monkeypatch.setattr(HeadPredictor, "scores", counting)
    store = make_targets(cfg, source, conch=tiny_run.conch, progress=False)
    assert store.complete and counted["n"] == 12 - n_cut
    again = store.read(np.arange(12))
    assert np.array_equal(again[0], scores) and np.array_equal(again[1], labels) and np.array_equal(again[2], gate)
    # complete: reused as is, no backbone built (conch=None would build one)
    assert make_targets(cfg, source, conch=None, progress=False).path == path and counted["n"] == 12 - n_cut


def test_targets_of_other_settings_are_refused(tiny_run, reference):
    cfg = quick_config(tiny_run, tiny_run.run / "unused", tta=True)
    with pytest.raises(ConstructError, match=r"other settings \(tta differ\)"):
        make_targets(cfg, split_source(tiny_run.data, "train", BCSS, 224), conch=tiny_run.conch, progress=False)


def test_missing_or_mismatched_targets_are_one_line(tiny_run, reference, tmp_path):
    samples = list_split(tiny_run.data, "train", BCSS)
    with pytest.raises(ConstructError, match="teacher targets not found"):
        open_targets(tmp_path / "nope.zarr", samples, BCSS)
    store = open_targets(reference[0], samples, BCSS)
    assert store.complete
    extra = samples + [samples[0].__class__("zz_other", samples[0].image_path, samples[0].labels, None)]
    with pytest.raises(ConstructError, match="lack 1 train tiles"):
        open_targets(reference[0], extra, BCSS)


def test_auto_reuses_targets_at_the_precision_they_were_made_at(tiny_run, reference, tmp_path, monkeypatch):
    import construct.runtime as runtime

    made = ScoreStore.open(reference[0]).compat["precision"]
    # On a machine where auto alone would pick the other precision, the finished targets are still reused.
    monkeypatch.setattr(runtime, "native_bf16", lambda device: "AMX" if made == "fp32" else None)
    store = _make(tiny_run, tmp_path, conch=None)  # no CONCH is built: nothing is left to compute
    assert store.complete and store.compat["precision"] == made
