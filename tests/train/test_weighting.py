"""Learned uncertainty weighting: each term's factor must reach 1 / (w·L) within the schedule."""

from __future__ import annotations

import functools

import pytest
import torch

from construct.train.config import resolve_config
from construct.train.trainer import build_optimizer, lr_factor
from construct.train.weighting import LossWeighting

# Constant losses standing in for a run's plateau: cls 0.3 (weight 1), distill 0.2 (1.5), contrast 1.5
# (0.2). Each product w·L is 0.3, so every learned factor exp(-s) should settle at 1 / 0.3.
PLATEAU = {"cls": 0.3, "distill": 0.2, "contrast": 1.5}
TARGET = 1 / 0.3


def learned_factors(**flags) -> list[float]:
    """Train the log-variances alone on the plateau over the demo preset's schedule (720 steps, poly)."""
    cfg = resolve_config("demo", None, loss_weighting="uncertainty", **flags)
    total = int(cfg.steps)
    weighting = LossWeighting(cfg, total)
    head_param = torch.nn.Parameter(torch.zeros(1))  # the head's group; no gradient reaches it here
    opt = build_optimizer(cfg, [head_param], weighting)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, functools.partial(
        lr_factor, total=total, warmup=round(cfg.warmup * total), power=cfg.poly_power))
    losses = {k: torch.tensor(v) for k, v in PLATEAU.items()}
    for step in range(total):
        opt.zero_grad()
        weighting(losses, step).backward()
        opt.step()
        sched.step()
    return torch.exp(-weighting.log_vars.detach()).tolist()


def test_factors_settle_at_one_over_weighted_loss_at_their_own_lr():
    assert learned_factors() == pytest.approx([TARGET] * 3, rel=0.05)


def test_at_the_heads_lr_the_factors_barely_move():
    """What the head's lr (the demo preset's 1e-3) alone did: ~1.4 where 3.3 is needed."""
    cfg = resolve_config("demo")
    assert all(f < 0.5 * TARGET for f in learned_factors(loss_weighting_lr=cfg.lr))


def test_log_variances_have_their_own_group_without_weight_decay():
    cfg = resolve_config("paper", None, loss_weighting="uncertainty", loss_weighting_lr=0.05)
    weighting = LossWeighting(cfg, total_steps=10)
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], weighting)
    head_group, own = opt.param_groups
    assert (head_group["lr"], head_group["weight_decay"]) == (cfg.lr, cfg.weight_decay)
    assert (own["lr"], own["weight_decay"]) == (0.05, 0.0)
    assert own["params"][0] is weighting.log_vars


def test_fixed_weighting_adds_no_group():
    cfg = resolve_config("paper")
    opt = build_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))], LossWeighting(cfg, total_steps=10))
    assert len(opt.param_groups) == 1
