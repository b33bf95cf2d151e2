"""A killed run, resumed, ends with the weights of an uninterrupted one; bad steps stop cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest
import torch

import construct.train.trainer as trainer
from construct.errors import ConstructError
from construct.train.trainer import train
from thread_count import torch_threads

from .helpers import head_weights, metrics

# 60 rows, batch 10: 6 steps per epoch, 2 epochs; resumable checkpoints every 4 steps and at epoch ends.
SCHEDULE = dict(epochs=2, checkpoint_every=4)


class Killed(BaseException):
    """Stands in for a kill: not an Exception, so nothing on the way out may catch it."""


def kill_at_step(monkeypatch, k: int) -> None:
    """Make training die when it starts its k-th step (1-based, counted across epochs)."""
    calls = {"n": 0}
    orig = trainer.compute_losses

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise Killed(f"killed at step {k}")
        return orig(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_losses", wrapped)


@pytest.fixture(scope="module")
def reference(stores, tmp_path_factory):
    """The uninterrupted run."""
    from construct.train.config import resolve_config

    out = tmp_path_factory.mktemp("reference") / "run"
    cfg = resolve_config("demo", None, features=str(stores["train"]), val_features=str(stores["valid"]),
                         out=str(out), workers=0, device="cpu", **SCHEDULE)
    with torch_threads(1):  # bitwise comparisons need the tests' own thread count (tests/train/conftest.py)
        train(cfg, progress=False)
    return out


def assert_same_run(run, reference) -> None:
    for which in ("last", "best"):
        got, want = head_weights(run, which), head_weights(reference, which)
        assert got.keys() == want.keys()
        diff = [k for k in want if not torch.equal(got[k], want[k])]
        assert not diff, f"head_{which} differs in {diff[:5]}"
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(metrics(run)) == strip(metrics(reference))  # each epoch once, same numbers


# step 3: before the first checkpoint (the run starts over); 5: mid epoch 1, after the step-4 checkpoint.
# Mid epoch 2 is the SIGKILL test below.
@pytest.mark.parametrize("kill", [3, 5])
def test_resume_after_a_kill_gives_the_uninterrupted_weights(make_cfg, reference, tmp_path, monkeypatch, kill):
    cfg = make_cfg(out=tmp_path / "run", **SCHEDULE)
    with monkeypatch.context() as m:
        kill_at_step(m, kill)
        with pytest.raises(Killed):
            train(cfg, progress=False)
    train(cfg, resume=True, progress=False)
    assert_same_run(tmp_path / "run", reference)


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(make_cfg, reference, tmp_path, monkeypatch):
    """Atomic writes: a kill in the middle of writing checkpoint.pt leaves the previous one intact."""
    cfg = make_cfg(out=tmp_path / "run", **SCHEDULE)
    calls = {"n": 0}
    orig = torch.save

    def dying_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # the step-8 checkpoint (after step 4 and the end of epoch 1)
            with open(f, "wb") as fh:
                fh.write(b"half a checkpoint")
            raise Killed("killed while saving")
        return orig(obj, f, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(trainer.torch, "save", dying_save)
        with pytest.raises(Killed):
            train(cfg, progress=False)
    run = tmp_path / "run"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
    assert torch.load(run / "checkpoint.pt", weights_only=True)["state"]["global_step"] == 6
    train(cfg, resume=True, progress=False)
    assert_same_run(run, reference)


def test_resume_after_sigkill(make_cfg, reference, tmp_path):
    """A real SIGKILL of a training process (mid epoch 2), then --resume in this one. Bitwise equality
    needs the same number of CPU threads on both sides (float reductions split differently)."""
    cfg = make_cfg(out=tmp_path / "run", **SCHEDULE)
    script = textwrap.dedent(f"""
        import os, signal
        import torch
        torch.set_num_threads({torch.get_num_threads()})
        import construct.train.trainer as trainer
        from construct.train.config import resolve_config
        settings = {cfg.to_dict()!r}
        cfg = resolve_config(settings.pop("preset"), None, **settings)
        orig, n = trainer.compute_losses, [0]
        def wrapped(*a, **k):
            n[0] += 1
            if n[0] == 10:
                os.kill(os.getpid(), signal.SIGKILL)
            return orig(*a, **k)
        trainer.compute_losses = wrapped
        trainer.train(cfg, progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert len(metrics(tmp_path / "run")) == 1  # epoch 1 finished, epoch 2 did not
    train(cfg, resume=True, progress=False)
    assert_same_run(tmp_path / "run", reference)


def test_resume_needs_a_run(make_cfg, tmp_path):
    with pytest.raises(ConstructError, match="nothing to resume"):
        train(make_cfg(out=tmp_path / "empty"), resume=True, progress=False)


def _nan_at_step(monkeypatch, k: int, where: str) -> dict:
    """From step k on, make the loss NaN (`loss`) or feed an Inf feature (`input`); returns a dict that
    receives the head's state at the start of step k (the last good weights)."""
    calls, seen = {"n": 0}, {}
    orig = trainer.compute_losses

    def wrapped(head, chead, maps, labels, cfg, bank, *rest):
        calls["n"] += 1
        if calls["n"] == k:
            seen["state"] = {n: v.detach().clone() for n, v in head.state_dict().items()}
            if where == "input":
                maps = dict(maps)
                maps["conch_b9"] = maps["conch_b9"].clone()
                maps["conch_b9"][0, 0, 0, 0] = float("inf")
        losses = orig(head, chead, maps, labels, cfg, bank, *rest)
        if calls["n"] == k and where == "loss":
            losses["cls"] = losses["cls"] * float("nan")
            losses["total"] = losses["total"] + losses["cls"]
        return losses

    monkeypatch.setattr(trainer, "compute_losses", wrapped)
    return seen


@pytest.mark.parametrize("where", ["loss", "input"])
def test_nonfinite_loss_stops_and_keeps_the_last_good_weights(make_cfg, tmp_path, monkeypatch, where):
    cfg = make_cfg(out=tmp_path / "run")
    seen = _nan_at_step(monkeypatch, 2, where)
    with pytest.raises(ConstructError) as err:
        train(cfg, progress=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert "became nan" in msg and "epoch 1 step 2" in msg and "head_last.safetensors" in msg
    saved = head_weights(tmp_path / "run")
    assert all(torch.isfinite(v.float()).all() for v in saved.values())
    # exactly the weights after step 1, batch-norm statistics included (step 2's forward is undone)
    assert all(torch.equal(saved[k], seen["state"][k]) for k in saved)


def test_nonfinite_gradient_stops_too(make_cfg, tmp_path, monkeypatch):
    """A finite loss with a NaN gradient would poison the weights at opt.step(): stop before it."""
    calls = {"n": 0}
    orig = trainer.compute_losses

    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return g * float("nan")

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        losses = orig(*args, **kwargs)
        if calls["n"] == 2:
            losses["total"] = NanGrad.apply(losses["total"])
        return losses

    monkeypatch.setattr(trainer, "compute_losses", wrapped)
    with pytest.raises(ConstructError, match=r"gradient became nan .*at epoch 1 step 2"):
        train(make_cfg(out=tmp_path / "run"), progress=False)
    assert all(torch.isfinite(v.float()).all() for v in head_weights(tmp_path / "run").values())
