"""The student's objective: each term on hand-computed values, and each reaching the student's weights."""

from __future__ import annotations

import math

import pytest
import torch

from construct.distill.config import DistillConfig
from construct.distill.losses import (
    boundary_ce,
    boundary_weights,
    fixed_weighted,
    soft_mse,
    soft_targets,
    uncertainty_weighted,
)
from construct.distill.trainer import objective
from construct.student.model import build_student


def test_soft_targets_zero_absent_classes_and_renormalise():
    teacher = torch.tensor([0.6, 0.2, 0.2]).view(1, 3, 1, 1)  # two classes + background
    t = soft_targets(teacher, torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(t.flatten(), torch.tensor([0.0, 0.5, 0.5]))


def test_soft_mse_by_hand():
    logits = torch.zeros(1, 3, 1, 1)  # softmax = 1/3 each
    teacher = torch.tensor([0.6, 0.2, 0.2]).view(1, 3, 1, 1)
    # gate keeps class 1 only: targets (0, .5, .5); squared errors (1/9, 1/36, 1/36), mean over 3 channels
    expected = (1 / 9 + 1 / 36 + 1 / 36) / 3
    assert soft_mse(logits, teacher, torch.tensor([[0.0, 1.0]])).item() == pytest.approx(expected)


def test_boundary_weights_by_hand():
    mask = torch.tensor([[[0, 0, 0, 1, 1, 1]]])  # (1, 1, 6): one boundary between columns 2 and 3
    w = boundary_weights(mask, radius=1, boost=2.0)
    # columns 2 and 3 are on the boundary, columns 1 and 4 within 1 px of it, 0 and 5 are not
    assert w.tolist() == [[[1.0, 3.0, 3.0, 3.0, 3.0, 1.0]]]
    assert boundary_weights(mask, radius=0, boost=2.0).tolist() == [[[1.0, 1.0, 3.0, 3.0, 1.0, 1.0]]]


def test_boundary_ce_by_hand():
    logits = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.75]])).view(1, 2, 1, 2)  # p(label 0) = .5, .25
    mask = torch.tensor([[[0, 1]]])  # pixel 0 label 0 (p .5), pixel 1 label 1 (p .75)
    weights = torch.tensor([[[1.0, 3.0]]])
    expected = (1 * -math.log(0.5) + 3 * -math.log(0.75)) / 4
    assert boundary_ce(logits, mask, weights).item() == pytest.approx(expected, rel=1e-6)


def test_uncertainty_and_fixed_weighting_by_hand():
    losses = torch.tensor([2.0, 0.5])
    s = torch.tensor([0.0, math.log(4.0)])
    expected = (0.5 * 2.0 + 0.0) + (0.5 * 0.25 * 0.5 + 0.5 * math.log(4.0))
    assert uncertainty_weighted(losses, s).item() == pytest.approx(expected)
    assert fixed_weighted(losses, torch.tensor([1.0, 2.0])).item() == pytest.approx(3.0)


@pytest.mark.parametrize("term", ["mse", "ce", "weighted"])
def test_each_term_reaches_the_student(term):
    torch.manual_seed(0)
    student = build_student("fpn", "mobilenet-v3-small", 5)
    b, h = 2, 64
    mask = torch.zeros(b, h, h, dtype=torch.long)
    mask[:, :, h // 2:] = 4
    batch = {"images01": torch.rand(b, 3, h, h), "teacher": torch.rand(b, 5, h, h), "mask": mask,
             "gate": torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]])}
    log_vars = torch.zeros(2, requires_grad=True)
    total, terms = objective(student, batch, DistillConfig(run=".", data=".", out="."), log_vars)
    loss = total if term == "weighted" else terms[term]
    loss.backward()
    grads = [p.grad for p in student.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0
    if term == "weighted":
        assert float(log_vars.grad.abs().sum()) > 0
