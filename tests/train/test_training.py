"""Training on a random-tiny store of the synthetic data: it learns, it is reproducible, RUN is complete."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from construct.head.io import load_head
from construct.head.model import ConStructHead
from construct.seeding import seeded_init
from construct.store import FeatureStore
from construct.train.config import resolve_config
from construct.train.trainer import _head_config, train
from construct.train.validate import validate
from thread_count import torch_threads

from .helpers import head_weights, metrics

UNTRAINED_SEEDS = range(5)


@pytest.fixture(scope="module")
def demo_run(stores, tmp_path_factory):
    """The demo preset (its full schedule) on the 60-tile store, validated on the 12-tile store."""
    out = tmp_path_factory.mktemp("demo") / "run"
    cfg = resolve_config("demo", None, features=str(stores["train"]), val_features=str(stores["valid"]),
                         out=str(out), workers=0, device="cpu")
    with torch_threads(1):  # as the tests here run (tests/train/conftest.py)
        return cfg, train(cfg, progress=False)


def untrained_mious(cfg, stores) -> list[float]:
    """Validation mIoU of the head as training starts it (text-initialised), for several init seeds."""
    store, val = FeatureStore.open(stores["train"]), FeatureStore.open(stores["valid"])
    hc = _head_config(cfg, store)
    out = []
    for seed in UNTRAINED_SEEDS:
        with seeded_init(seed):
            head = ConStructHead(hc, torch.from_numpy(store.text_embeddings))
        out.append(validate(head, val, torch.device("cpu"))["mIoU"])
    return out


def test_run_folder_holds_everything(demo_run, stores):
    cfg, result = demo_run
    run = result.run
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "head_best.safetensors", "head_last.safetensors", "metrics.jsonl", "train.log",
            "checkpoint.pt"} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")], names  # no temp files left

    meta = json.loads((run / "config.json").read_text())
    assert meta["format"] == "construct-run"
    assert meta["train"] == cfg.to_dict()  # the resolved config: preset, then overrides
    assert meta["train"]["lr"] == resolve_config("demo").lr and meta["train"]["epochs"] == cfg.epochs
    head, _ = load_head(run)
    assert meta["n_trainable"] == result.n_trainable == head.n_trainable() > 0
    store = FeatureStore.open(stores["train"])
    assert set(meta["backbones"]) == {"conch", "segformer"}
    for k, recipe in store.recipes.items():
        assert meta["backbones"][k]["fingerprint"] == recipe.fingerprint and len(recipe.fingerprint) == 64
    assert meta["head"]["n_classes"] == len(store.classes)
    assert meta["store"]["n_rows"] == store.n_rows

    log = (run / "train.log").read_text()
    assert f"{result.n_trainable:,} trainable parameters" in log and "plan: 60 tiles, batch 10" in log

    records = metrics(run)
    # 720 steps over 6 batches an epoch: a record every 24 steps (4 epochs), 30 in all
    assert [r["step"] for r in records] == list(range(24, cfg.steps + 1, 24)) and records[0]["epoch"] == 4
    for r in records:
        assert {"loss_cls", "loss_distill", "loss_contrast", "loss_total", "val_mIoU", "lr"} <= set(r)
        assert all(np.isfinite(r[k]) for k in r if k.startswith("loss_"))
    # head_best is the epoch with the best validation mIoU
    assert result.best_miou == max(r["val_mIoU"] for r in records)
    best, _ = load_head(run, "best")
    assert validate(best, FeatureStore.open(stores["valid"]), torch.device("cpu"))["mIoU"] == pytest.approx(
        result.best_miou, abs=1e-9)


def test_training_lowers_the_loss_and_beats_an_untrained_head(demo_run, stores, capsys):
    cfg, result = demo_run
    records = metrics(result.run)
    first, last = records[0], records[-1]
    assert last["loss_total"] < first["loss_total"]
    assert last["loss_cls"] < first["loss_cls"]
    untrained = untrained_mious(cfg, stores)
    trained = max(r["val_mIoU"] for r in records)  # head_best, as refine uses it
    with capsys.disabled():
        print(f"\nval mIoU: trained (best of {cfg.steps} steps) {trained:.1f}, last {last['val_mIoU']:.1f}; "
              f"untrained heads (seeds {list(UNTRAINED_SEEDS)}) {', '.join(f'{m:.1f}' for m in untrained)}")
    # Beat every untrained initialisation, not only the one training started from (the untrained level
    # swings with the seed: a random prototype direction can line up with a class or against it).
    assert trained > max(untrained) + 5
    assert last["val_mIoU"] > np.mean(untrained) + 10


def test_same_seed_same_weights(make_cfg, tmp_path):
    """The same run whether the store is read into memory (the default at this size) or streamed by a
    loader process."""
    a = train(make_cfg(out=tmp_path / "a", seed=3), progress=False)
    b = train(make_cfg(out=tmp_path / "b", seed=3, workers=1, memory_gb=0), progress=False)
    wa, wb = head_weights(a.run), head_weights(b.run)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert metrics(a.run)[0]["loss_total"] == metrics(b.run)[0]["loss_total"]


def test_text_init_sets_the_starting_prototypes(make_cfg, stores, tmp_path, monkeypatch):
    """With text init the prototypes start as the L2-normalised CONCH text embeddings; with
    --no-text-init they start elsewhere (the ablation). Read off the head as its first step begins."""
    import construct.train.trainer as trainer

    class Stop(BaseException):
        pass

    def first_step(head, *args, **kwargs):
        seen["prototypes"] = head.prototypes.detach().clone()
        raise Stop

    monkeypatch.setattr(trainer, "compute_losses", first_step)
    text = torch.nn.functional.normalize(torch.from_numpy(FeatureStore.open(stores["train"]).text_embeddings), dim=-1)
    cos = {}
    for text_init in (True, False):
        seen = {}
        with pytest.raises(Stop):
            train(make_cfg(out=tmp_path / str(text_init), text_init=text_init), progress=False)
        cos[text_init] = (torch.nn.functional.normalize(seen["prototypes"], dim=-1) * text).sum(-1)
    assert torch.allclose(cos[True], torch.ones(len(text)))
    assert torch.all(cos[False] < 0.9)
