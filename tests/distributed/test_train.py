"""`torchrun -m construct train`: two DDP processes take the step one process takes, and resume a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.train.config import resolve_config
from construct.train.trainer import train

from .helpers import run, torchrun

N_ROWS, BATCH = 12, 9  # one step per epoch; the processes hold 5 and 4 of the batch's rows
FLAGS = ["--preset", "demo", "--batch-size", str(BATCH), "--workers", "0", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def stores(synth_data, tiny_backbones, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_stores")
    out = {}
    for split, limit in (("train", N_ROWS), ("valid", None)):
        cfg = ExtractConfig(data=synth_data, split=split, out=root / f"{split}.zarr", conch="random-tiny",
                            segformer="random-tiny", workers=0, limit=limit)
        out[split] = extract(cfg, *tiny_backbones, progress=False).store
    return out


def single_process(stores, out: Path, epochs: int) -> Path:
    cfg = resolve_config("demo", None, features=str(stores["train"]), val_features=str(stores["valid"]),
                         out=str(out), epochs=epochs, batch_size=BATCH, workers=0, device="cpu")
    train(cfg, progress=False)
    return out


def two_processes(stores, out: Path, *extra: str) -> str:
    done = run(torchrun("train", "--features", stores["train"], "--val-features", stores["valid"], "--out", out,
                        *FLAGS, *extra))
    assert done.stdout.count("run:") == 1, done.stdout  # rank 0 reports for both
    return done.stdout


def load(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    ck = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {"head": load_file(str(run_dir / "head_last.safetensors")), "optim": ck["optim"]["state"],
            "bank": ck["bank"], "state": ck["state"], "records": records, "noise": biases_before_batchnorm(run_dir),
            "param_index": param_index(run_dir)}


def param_index(run_dir: Path) -> dict[str, int]:
    """Parameter name → its index in the optimiser's state (the trainer passes the trainable ones in order)."""
    from construct.head.io import load_head

    head, _ = load_head(run_dir, "last")
    return {n: i for i, n in enumerate(n for n, p in head.named_parameters() if p.requires_grad)}


def biases_before_batchnorm(run_dir: Path) -> set[str]:
    """Conv biases that feed a batch norm directly. The norm subtracts them, so their exact gradient is 0 and
    the computed one is rounding noise, which Adam scales up to steps of about lr: their values depend on
    the order of additions, in one process as in two. Their gradients (Adam's moments) are still compared."""
    from construct.head.io import load_head

    head, _ = load_head(run_dir, "last")
    return {f"{name}.{i}.bias" for name, m in head.named_modules() if isinstance(m, torch.nn.Sequential)
            for i, (a, b) in enumerate(zip(m, m[1:]))
            if isinstance(a, torch.nn.Conv2d) and isinstance(b, torch.nn.BatchNorm2d)}


def assert_same_training(got: dict, want: dict) -> None:
    close = dict(rtol=1e-4, atol=1e-6)
    assert got["head"].keys() == want["head"].keys()
    noise = want["noise"]
    assert noise and noise < want["head"].keys()
    for k, v in want["head"].items():  # weights and batch-norm running statistics
        if k in noise:
            continue
        got_k, want_k = got["head"][k], v
        if k in want["param_index"]:
            # A weight whose gradient is at rounding level (below the moments' own atol, so still compared
            # there) takes an Adam step of up to lr set by that rounding: the order of additions decides it.
            settled = want["optim"][want["param_index"][k]]["exp_avg"].abs() >= close["atol"]
            got_k, want_k = got_k[settled], want_k[settled]
        torch.testing.assert_close(got_k, want_k, **close, msg=lambda m: f"{k}: {m}")
    # Adam's moments hold the gradients themselves (its first step moves each weight by about lr, whatever
    # the gradient's size): they tell a correctly averaged gradient from a merely same-signed one.
    assert got["optim"].keys() == want["optim"].keys()
    for i, s in want["optim"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(got["optim"][i][name], s[name], **close, msg=lambda m: f"{i}.{name}: {m}")
    # the memory bank holds the background embeddings of the whole batch, in its order
    assert got["bank"]["count"] == want["bank"]["count"] > 0 and got["bank"]["ptr"] == want["bank"]["ptr"]
    torch.testing.assert_close(got["bank"]["buffer"], want["bank"]["buffer"], **close)
    assert len(got["records"]) == len(want["records"])
    for g, w in zip(got["records"], want["records"]):
        for k in ("loss_cls", "loss_distill", "loss_contrast", "loss_total"):
            assert g[k] == pytest.approx(w[k], rel=1e-4), k
        # Validation runs in eval mode, where those noisy biases are no longer cancelled by the batch's mean.
        assert g["val_mIoU"] == pytest.approx(w["val_mIoU"], abs=0.1)
        assert g["step"] == w["step"] and g["epoch"] == w["epoch"]


def test_one_ddp_step_equals_the_single_process_step(stores, tmp_path):
    want = load(single_process(stores, tmp_path / "one", epochs=1))
    assert want["state"]["global_step"] == 1
    two_processes(stores, tmp_path / "two", "--epochs", "1")
    assert_same_training(load(tmp_path / "two"), want)


class Killed(BaseException):
    pass


def test_two_processes_resume_a_run(stores, tmp_path, monkeypatch):
    """A run stopped after its first epoch, resumed by two processes, ends as the uninterrupted run."""
    import construct.train.trainer as trainer

    want = load(single_process(stores, tmp_path / "one", epochs=2))
    orig, calls = trainer.compute_losses, {"n": 0}

    def die_at_second_step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Killed
        return orig(*args, **kwargs)

    monkeypatch.setattr(trainer, "compute_losses", die_at_second_step)
    with pytest.raises(Killed):
        single_process(stores, tmp_path / "two", epochs=2)
    monkeypatch.undo()
    out = two_processes(stores, tmp_path / "two", "--resume")
    assert "best val mIoU" in out
    assert_same_training(load(tmp_path / "two"), want)
