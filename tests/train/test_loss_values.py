"""Each loss against a value worked out by hand on tiny tensors, and the direction one step moves things.

The gradient-reach tests show every term reaches the CAM, not that it pulls the right way: a flipped
InfoNCE sign, an inverted BCE target or regions pooled from the wrong CONCH block would pass them. These
would not. The expected numbers are written out with plain arithmetic, independent of the implementation.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from construct.head.model import ConStructHead, HeadConfig, HeadOutput
from construct.head.pooler import ContrastiveHead
from construct.seeding import seeded_init
from construct.train.config import TrainConfig
from construct.train.losses import (
    classification_loss,
    fg_bg_contrastive_loss,
    relational_distillation_loss,
    soft_region_weights,
)
from construct.train.objective import compute_losses

LN3 = math.log(3.0)


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# ---- values by hand ------------------------------------------------------------------------------------


def test_classification_loss_by_hand():
    # One image, classes (present, absent); level 2 weighted 0.1, level 3 weighted 1.
    out = HeadOutput(features={}, logits={2: torch.tensor([[LN3, -LN3]]), 3: torch.tensor([[0.0, LN3]])})
    labels = torch.tensor([[1, 0]], dtype=torch.uint8)
    # BCE(x, y) = -[y log s(x) + (1 - y) log(1 - s(x))], s(ln 3) = 3/4, s(0) = 1/2.
    level2 = (-math.log(3 / 4) + -math.log(1 - 1 / 4)) / 2  # present at ln 3, absent at -ln 3
    level3 = (-math.log(1 / 2) + -math.log(1 - 3 / 4)) / 2  # present at 0, absent at ln 3
    expected = 0.1 * level2 + 1.0 * level3
    got = classification_loss(out, labels, {2: 0.1, 3: 1.0})
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx(0.1 * math.log(4 / 3) + 1.5 * math.log(2))


def test_relational_distillation_loss_by_hand():
    # Two tokens on a 1x2 grid. Student tokens (3, 0) and (0, 1): orthogonal, affinity [[1, 0], [0, 1]]
    # (the 3 checks the tokens are normalised). Teacher tokens (1, 0) and (1, 1): cosine 1/sqrt(2).
    student = torch.tensor([[3.0, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 2)
    teacher = torch.tensor([[1.0, 0.0], [1.0, 1.0]]).t().reshape(1, 2, 1, 2)
    # Squared differences: 0 on the diagonal, (1/sqrt(2))^2 = 1/2 off it; mean over 4 entries.
    expected = (0 + 0.5 + 0.5 + 0) / 4
    assert relational_distillation_loss(student, teacher).item() == pytest.approx(expected, rel=1e-6)
    assert relational_distillation_loss(student, student).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_region_weights_by_hand():
    # Class 0: CAM 0, 1, 2 (max 2); class 1: zero everywhere (max clamped, so all tokens well below).
    cam = torch.tensor([[[[0.0, 1.0, 2.0]], [[0.0, 0.0, 0.0]]]])
    got = soft_region_weights(cam, threshold=0.5, softness=0.25)
    # sigmoid((cam / max - 0.5) / 0.25)
    expected = torch.tensor([[[[sigmoid(-2), 0.5, sigmoid(2)]], [[sigmoid(-2)] * 3]]])
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-6, atol=1e-7)


def contrast_case():
    """Two (region, class) pairs, two prototypes (the second not unit length), one bank entry, tau 0.5."""
    fg = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    bg = torch.tensor([[0.0, 1.0], [0.8, 0.6]])
    cls = torch.tensor([0, 1])
    prototypes = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # unit directions (1, 0) and (0, 1)
    bank = torch.tensor([[0.0, 1.0]])
    return fg, bg, cls, prototypes, bank, 0.5


def test_fg_bg_contrastive_loss_by_hand():
    fg, bg, cls, prototypes, bank, tau = contrast_case()
    e = math.exp
    # Row 1, class 0. FG similarities / tau: own 2, other prototype 0, bank 0.
    fg1 = -(2 - math.log(e(2) + e(0) + e(0)))
    # BG similarities / tau: class 0 -> 0, class 1 -> 2; positives are the other classes (class 1).
    bg1 = -(2 - math.log(e(0) + e(2)))
    # Row 2, class 1. FG: own 0.8/0.5 = 1.6, other 0.6/0.5 = 1.2, bank 1.6.
    fg2 = -(1.6 - math.log(e(1.6) + e(1.2) + e(1.6)))
    # BG: class 0 -> 1.6, class 1 -> 1.2; positive: class 0.
    bg2 = -(1.6 - math.log(e(1.6) + e(1.2)))
    expected = (fg1 + fg2) / 2 + (bg1 + bg2) / 2
    got = fg_bg_contrastive_loss(fg, bg, cls, prototypes, bank, tau)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # Without a bank the FG denominators lose the bank term.
    no_bank = (-(2 - math.log(e(2) + e(0))) - (1.6 - math.log(e(1.6) + e(1.2)))) / 2 + (bg1 + bg2) / 2
    assert fg_bg_contrastive_loss(fg, bg, cls, prototypes, None, tau).item() == pytest.approx(no_bank, rel=1e-6)


# ---- direction of one optimiser step -------------------------------------------------------------------


def cosine_to_own(x: torch.Tensor, prototypes: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(x, prototypes[cls], dim=-1)


def test_contrast_step_pulls_fg_to_its_prototype_and_bg_away():
    _, _, cls, prototypes, bank, tau = contrast_case()
    fg = torch.tensor([[0.8, 0.6], [0.6, 0.8]])  # neither region already on a prototype
    bg = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    fg, bg, prototypes = (t.clone().requires_grad_(True) for t in (fg, bg, prototypes))
    before = fg_bg_contrastive_loss(fg, bg, cls, prototypes, bank, tau)
    fg_cos, bg_cos = (cosine_to_own(t, prototypes, cls).detach() for t in (fg, bg))
    opt = torch.optim.SGD([fg, bg, prototypes], lr=0.05)
    before.backward()
    opt.step()
    with torch.no_grad():
        assert fg_bg_contrastive_loss(fg, bg, cls, prototypes, bank, tau) < before
        assert (cosine_to_own(fg, prototypes, cls) > fg_cos).all()  # FG towards its own class
        assert (cosine_to_own(bg, prototypes, cls) < bg_cos).all()  # BG away from it


B, C, WIDTH, EMBED, GRID, SEG_CH = 4, 3, 16, 16, 6, 8


def toy_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = {f"conch_b{b}": torch.randn(B, WIDTH, GRID, GRID, generator=g) for b in (6, 9, 12)}
    maps["seg_s3"] = torch.randn(B, SEG_CH, GRID, GRID, generator=g)
    maps["seg_s4"] = torch.randn(B, SEG_CH, GRID // 2, GRID // 2, generator=g)
    labels = torch.tensor([[1, 0, 0], [0, 1, 1], [1, 1, 0], [0, 0, 1]], dtype=torch.uint8)
    return maps, labels


def toy_head(cam_levels: tuple[int, ...] = (2, 3, 4), seed: int = 0) -> ConStructHead:
    n = len(cam_levels)
    distill = (3,) if 3 in cam_levels else cam_levels[:1]
    with seeded_init(seed):
        head = ConStructHead(HeadConfig(n_classes=C, width=WIDTH, embed_dim=EMBED, grid=GRID,
                                        cam_levels=cam_levels, bce_weights=(1.0,) * n, fuse_weights=(1 / n,) * n,
                                        distill_levels=distill), torch.randn(C, EMBED))
        for adapter in head.adapters.values():  # adapters past their identity start
            adapter.body[-1].weight.data.normal_(0, 0.1)
    return head


@pytest.fixture(scope="module")
def pooler() -> ContrastiveHead:
    """A frozen contrastive head of the right shapes with random weights (no backbone needed)."""
    with seeded_init(1):
        head = ContrastiveHead(width=WIDTH, d_model=EMBED, n_head=2, n_queries=1, out_dim=EMBED)
        for p in head.parameters():
            p.data.normal_(0, 0.5)
    return head.requires_grad_(False).eval()


def config(**terms: bool) -> TrainConfig:
    return TrainConfig(features="unused", **{"distill": False, "contrast": False, **terms})


def step_on(term: str, head: ConStructHead, pooler, maps, labels, cfg: TrainConfig, lr: float) -> None:
    opt = torch.optim.SGD([p for p in head.parameters() if p.requires_grad], lr=lr)
    compute_losses(head, pooler, maps, labels, cfg, None)[term].backward()
    opt.step()


def class_margin(head: ConStructHead, maps, labels) -> float:
    """Mean GAP logit of present classes minus that of absent ones, over the CAM levels."""
    with torch.no_grad():
        out = head(maps)
    present = labels.bool()
    return sum((g[present].mean() - g[~present].mean()).item() for g in out.logits.values())


def test_bce_step_raises_present_classes_over_absent_ones(pooler):
    maps, labels = toy_batch()
    head, cfg = toy_head().eval(), config()  # eval: batch norm is the same before and after the step
    before = compute_losses(head, pooler, maps, labels, cfg, None)["cls"].item()
    margin = class_margin(head, maps, labels)
    step_on("cls", head, pooler, maps, labels, cfg, lr=0.05)
    assert compute_losses(head, pooler, maps, labels, cfg, None)["cls"].item() < before
    assert class_margin(head, maps, labels) > margin


def affinity_gap(head: ConStructHead, maps) -> float:
    """Squared distance between student (level 3) and teacher cosine matrices, by explicit cosines."""
    with torch.no_grad():
        s = head(maps, with_cams=False).features[3].flatten(2)
    t = maps["seg_s3"].flatten(2)
    cos = lambda x: F.cosine_similarity(x[:, :, :, None], x[:, :, None, :], dim=1)  # noqa: E731
    return ((cos(s) - cos(t)) ** 2).mean().item()


def test_distill_step_brings_student_affinities_towards_the_teacher(pooler):
    maps, labels = toy_batch()
    head, cfg = toy_head().eval(), config(distill=True)
    before = affinity_gap(head, maps)
    step_on("distill", head, pooler, maps, labels, cfg, lr=0.5)
    assert affinity_gap(head, maps) < before


def test_contrast_step_lowers_the_contrast_term(pooler):
    maps, labels = toy_batch()
    head, cfg = toy_head().eval(), config(contrast=True)
    before = compute_losses(head, pooler, maps, labels, cfg, None)["contrast"].item()
    step_on("contrast", head, pooler, maps, labels, cfg, lr=0.01)
    assert compute_losses(head, pooler, maps, labels, cfg, None)["contrast"].item() < before


# ---- the contrast regions are pooled from CONCH block 12 -----------------------------------------------


def contrast_input_grads(head: ConStructHead, pooler) -> dict[str, bool]:
    """Which stored maps the contrast term, as training computes it, has a non-zero gradient for."""
    maps, labels = toy_batch()
    maps = {k: v.requires_grad_(True) for k, v in maps.items()}
    compute_losses(head.eval(), pooler, maps, labels, config(contrast=True), None)["contrast"].backward()
    return {k: v.grad is not None and bool(v.grad.abs().sum() > 0) for k, v in maps.items()}


def test_contrast_pools_block_12_tokens(pooler):
    # CAMs from blocks 6 and 9 only: block 12 can reach the term only as the pooled tokens.
    assert contrast_input_grads(toy_head(cam_levels=(2, 3)), pooler)["conch_b12"]


def test_contrast_reads_no_other_block(pooler):
    # CAM from block 12 only: no other stored map may change the term.
    grads = contrast_input_grads(toy_head(cam_levels=(4,)), pooler)
    assert grads["conch_b12"]
    assert not any(v for k, v in grads.items() if k != "conch_b12"), grads


def test_soft_region_weights_image_scope_takes_the_max_over_all_classes():
    """The authors' threshold: one max per image, over every class's map. Class 1 (max 1) is then
    thresholded against class 0's max 2, so its peak token sits exactly at the threshold."""
    cam = torch.tensor([[[[0.0, 1.0, 2.0]], [[0.0, 1.0, 0.0]]]])
    got = soft_region_weights(cam, threshold=0.5, softness=0.25, scope="image")
    expected = torch.tensor([[[[sigmoid(-2), 0.5, sigmoid(2)]], [[sigmoid(-2), 0.5, sigmoid(-2)]]]])
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-6, atol=1e-7)
    per_class = soft_region_weights(cam, threshold=0.5, softness=0.25, scope="class")
    assert per_class[0, 1, 0, 1].item() == pytest.approx(sigmoid(2))  # its own max: well above
