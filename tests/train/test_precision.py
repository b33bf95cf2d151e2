"""The head step at bf16: the forward runs in bf16 where asked, the losses, gradients and optimizer state stay
fp32, and the run records the precision it trained at."""

from __future__ import annotations

import json

import pytest
import torch

from construct.backbones.conch import build_conch
from construct.errors import ConstructError
from construct.runs import RUN_CONFIG
from construct.train.config import TrainConfig
from construct.train.objective import compute_losses
from construct.train.trainer import train

from .test_gradient_reach import make_batch, make_head


@pytest.fixture(scope="module")
def contrastive_head_tiny():
    return build_conch("random-tiny").contrastive_head.requires_grad_(False).eval()


def conv_output_dtypes(head) -> tuple[list[torch.dtype], list]:
    seen: list[torch.dtype] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
             for m in head.modules() if isinstance(m, torch.nn.Conv2d)]
    return seen, hooks


@pytest.mark.parametrize("precision, conv_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_head_forward_runs_at_the_precision_and_losses_in_fp32(contrastive_head_tiny, precision, conv_dtype):
    maps, labels = make_batch()
    head = make_head(perturbed=True)
    seen, hooks = conv_output_dtypes(head)
    losses = compute_losses(head, contrastive_head_tiny, maps, labels, TrainConfig(), bank=None, precision=precision)
    for h in hooks:
        h.remove()
    assert seen and set(seen) == {conv_dtype}
    assert all(v.dtype == torch.float32 for v in losses.values())
    losses["total"].backward()
    grads = [p.grad for p in head.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 for g in grads)  # fp32 weights, fp32 optimizer state


def test_bf16_losses_are_close_to_fp32(contrastive_head_tiny):
    maps, labels = make_batch()
    values = {}
    for precision in ("fp32", "bf16"):
        losses = compute_losses(make_head(perturbed=True), contrastive_head_tiny, maps, labels, TrainConfig(),
                                bank=None, precision=precision)
        values[precision] = {k: float(v.detach()) for k, v in losses.items()}
    for term, fp32 in values["fp32"].items():
        assert values["bf16"][term] == pytest.approx(fp32, rel=0.05, abs=1e-3), term


def test_a_run_records_the_precision_it_trained_at(make_cfg, tmp_path):
    out = tmp_path / "run"
    train(make_cfg(out=out, steps=2, precision="bf16"), progress=False)
    meta = json.loads((out / RUN_CONFIG).read_text())
    assert meta["precision"] == "bf16" and meta["train"]["precision"] == "bf16"


def test_an_unknown_precision_is_refused(make_cfg):
    with pytest.raises(ConstructError, match="--precision fp16"):
        make_cfg(precision="fp16")
