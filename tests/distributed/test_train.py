"""`torchrun -m construct train`: two DDP processes take the step one process takes, and resume a run.

What DDP is responsible for is compared: the averaged gradients, and the batch-wide statistics, memory bank
and losses. Two processes add the same terms in another order than one process (as other thread counts
or machines do), so float32 results agree only up to reordering: the tolerances below are derived from
that, and they are far smaller than what a process's missing share of the batch changes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.store import FeatureStore
from construct.train.config import resolve_config
from construct.train.trainer import train

from .helpers import run, torchrun

N_ROWS, BATCH = 12, 9  # one step per epoch; the processes hold 5 and 4 of the batch's rows
FLAGS = ["--preset", "demo", "--batch-size", str(BATCH), "--workers", "0", "--device", "cpu", "--quiet"]
UNIT_ROUNDOFF = 2.0 ** -24  # float32
ADAM_BETA1 = 0.9  # torch's default, which the trainer keeps


@pytest.fixture(scope="module")
def stores(synth_data, tiny_backbones, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_stores")
    out = {}
    for split, limit in (("train", N_ROWS), ("valid", None)):
        cfg = ExtractConfig(data=synth_data, split=split, out=root / f"{split}.zarr", conch="random-tiny",
                            segformer="random-tiny", workers=0, limit=limit)
        out[split] = extract(cfg, *tiny_backbones, progress=False).store
    return out


def reordering_tolerance(stores, scale: float) -> float:
    """How far two float32 results of the same step can be apart when their sums add the same terms in
    another order: n·u·scale. Reordering a sum of n terms moves it by at most (n - 1)·u·Σ|terms| (recursive
    summation); the longest sums of a step run over every row of the batch at every position of the finest
    CAM grid (twice the token grid), and the terms' magnitude is taken as `scale`, the largest value of
    the kind compared."""
    n_tokens, _ = FeatureStore.open(stores["train"]).shape("conch_b12")
    n_terms = BATCH * (2 * math.isqrt(n_tokens)) ** 2
    return n_terms * UNIT_ROUNDOFF * scale


def single_process(stores, out: Path, epochs: int, **settings) -> Path:
    cfg = resolve_config("demo", None, features=str(stores["train"]), val_features=str(stores["valid"]),
                         out=str(out), epochs=epochs, batch_size=BATCH, workers=0, device="cpu", **settings)
    train(cfg, progress=False)
    return out


def two_processes(stores, out: Path, *extra: str) -> str:
    done = run(torchrun("train", "--features", stores["train"], "--val-features", stores["valid"], "--out", out,
                        *FLAGS, *extra))
    assert done.stdout.count("run:") == 1, done.stdout  # rank 0 reports for both
    return done.stdout


def head_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "head_last.safetensors"))


def load(run_dir: Path) -> dict:
    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"head": head_tensors(run_dir), "optim": ck["optim"]["state"], "bank": ck["bank"],
            "state": ck["state"], "records": records}


def assert_within(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], atol: dict[str, float] | float,
                  what: str) -> None:
    assert got.keys() == want.keys(), what
    for k, w in want.items():
        limit = atol[k] if isinstance(atol, dict) else atol
        diff = float((got[k].double() - w.double()).abs().max()) if w.numel() else 0.0
        assert diff <= limit, f"{what} {k}: differs by {diff:.3g}, more than float32 reordering allows ({limit:.3g})"


def is_statistic(name: str) -> bool:
    return "running_" in name


def assert_same_statistics(stores, got: dict, want: dict) -> None:
    """Batch-norm statistics of the global batch, the memory bank of the whole batch's background
    embeddings (in its order), and each epoch's losses: forward values, each within reordering of its own
    magnitude."""
    stats = {k: v for k, v in want["head"].items() if is_statistic(k)}
    assert stats
    assert_within({k: got["head"][k] for k in stats}, stats,
                  {k: reordering_tolerance(stores, float(v.abs().max())) for k, v in stats.items()}, "statistic")
    counts = [k for k in want["head"] if k.endswith("num_batches_tracked")]
    assert all(torch.equal(got["head"][k], want["head"][k]) for k in counts)
    assert got["bank"]["count"] == want["bank"]["count"] > 0 and got["bank"]["ptr"] == want["bank"]["ptr"]
    bank = want["bank"]["buffer"]
    assert_within({"bank": got["bank"]["buffer"]}, {"bank": bank},
                  reordering_tolerance(stores, float(bank.abs().max())), "memory")
    assert len(got["records"]) == len(want["records"])
    for g, w in zip(got["records"], want["records"]):
        assert g["step"] == w["step"] and g["epoch"] == w["epoch"]
        for k in ("loss_cls", "loss_distill", "loss_contrast", "loss_total"):
            assert g[k] == pytest.approx(w[k], rel=reordering_tolerance(stores, 1.0), abs=0), k


def test_one_ddp_step_equals_the_single_process_step(stores, tmp_path):
    """With the real optimizer (AdamW), one step: the averaged gradient is the single-process gradient.
    After one step Adam's first moment is (1 - β1)·g exactly, so the checkpoint holds the gradients. The
    weights themselves are not compared: Adam's first step moves each weight by about lr whatever its
    gradient's size, so a gradient that is rounding noise (a bias feeding a batch norm, whose exact gradient
    is 0) becomes a step of lr in a direction set by the order of additions."""
    want = load(single_process(stores, tmp_path / "one", epochs=1))
    assert want["state"]["global_step"] == 1
    two_processes(stores, tmp_path / "two", "--epochs", "1")
    got = load(tmp_path / "two")
    grads = {i: s["exp_avg"] / (1 - ADAM_BETA1) for i, s in want["optim"].items()}
    # Every gradient is a sum of contributions no larger than the step's largest gradient element: those
    # whose exact value is 0 (the biases above) are rounding noise of that size.
    scale = max(float(g.abs().max()) for g in grads.values())
    assert_within({i: s["exp_avg"] / (1 - ADAM_BETA1) for i, s in got["optim"].items()}, grads,
                  reordering_tolerance(stores, scale), "gradient of parameter")
    assert_same_statistics(stores, got, want)
    # End to end with the real optimizer: validation after the step scores the same masks, but for the
    # few pixels that the noise steps above can move.
    for g, w in zip(got["records"], want["records"]):
        assert g["val_mIoU"] == pytest.approx(w["val_mIoU"], abs=0.5)


class Killed(BaseException):
    pass


def test_two_processes_resume_a_run(stores, tmp_path, monkeypatch):
    """A run stopped after its first epoch, resumed by two processes, ends as the uninterrupted run. Plain
    SGD (a config file) so that each weight's step is proportional to its gradient: the second step's
    updates, taken by two processes from the checkpoint, are the single process's."""
    import construct.train.trainer as trainer

    sgd = tmp_path / "sgd.json"
    sgd.write_text(json.dumps({"optimizer": "sgd"}))
    want = load(single_process(stores, tmp_path / "one", epochs=2, optimizer="sgd"))
    orig, calls = trainer.compute_losses, {"n": 0}

    def die_at_second_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_losses", die_at_second_step)
    with pytest.raises(Killed):
        single_process(stores, tmp_path / "two", epochs=2, optimizer="sgd")
    monkeypatch.undo()
    after_first = head_tensors(tmp_path / "two")  # the first epoch's weights, the resumed step's start
    out = two_processes(stores, tmp_path / "two", "--resume", "--config", str(sgd))
    assert "best val mIoU" in out
    got = load(tmp_path / "two")
    assert got["state"]["global_step"] == want["state"]["global_step"] == 2
    params = [k for k in want["head"] if not is_statistic(k) and not k.endswith("num_batches_tracked")]
    step_want = {k: want["head"][k] - after_first[k] for k in params}
    step_got = {k: got["head"][k] - after_first[k] for k in params}
    # Steps are lr times gradients: reordering of the step's largest, plus the rounding of w + step.
    scale = max(float(s.abs().max()) for s in step_want.values())
    atol = {k: reordering_tolerance(stores, scale) + 2 * UNIT_ROUNDOFF * float(after_first[k].abs().max())
            for k in params}
    assert_within(step_got, step_want, atol, "second step of parameter")
    assert_same_statistics(stores, got, want)
    for g, w in zip(got["records"], want["records"]):
        assert g["val_mIoU"] == pytest.approx(w["val_mIoU"], abs=0.5)
