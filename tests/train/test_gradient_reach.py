"""Every loss term reaches the parameters of the fused inference CAM (docs/design.md section 4).

The authors' released code has the defect that neither extra loss can change the CAMs: the contrastive
inputs are detached and distillation trains an adapter that feeds no CAM. Here each term alone, computed
exactly as training computes it (`compute_losses`), must give a non-zero gradient to some parameter the
fused CAM depends on; the same check run on a detached term must find nothing.
"""

from __future__ import annotations

import pytest
import torch

import construct.train.objective as objective
from construct.backbones.conch import build_conch
from construct.head.model import ConStructHead, HeadConfig, HeadOutput
from construct.train.config import TrainConfig
from construct.train.losses import MemoryBank

TERMS = ("cls", "distill", "contrast")
B, C, WIDTH, EMBED, GRID, SEG_CH = 6, 4, 64, 64, 14, 40


@pytest.fixture(scope="module")
def contrastive_head():
    chead = build_conch("random-tiny").contrastive_head
    return chead.requires_grad_(False).eval()


def make_batch(seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    maps = {f"conch_b{b}": torch.randn(B, WIDTH, GRID, GRID, generator=g) for b in (6, 9, 12)}
    maps["seg_s3"] = torch.randn(B, SEG_CH, GRID, GRID, generator=g)
    labels = (torch.rand(B, C, generator=g) < 0.5).to(torch.uint8)
    labels[torch.arange(B), torch.arange(B) % C] = 1  # every image has at least one class
    return maps, labels


def make_head(perturbed: bool, seed: int = 0) -> ConStructHead:
    """The head at initialisation (adapters are the identity) or with every adapter already non-trivial."""
    torch.manual_seed(seed)
    head = ConStructHead(HeadConfig(n_classes=C, width=WIDTH, embed_dim=EMBED, grid=GRID),
                         torch.randn(C, EMBED))
    if perturbed:
        with torch.no_grad():
            for adapter in head.adapters.values():
                adapter.body[-1].weight.normal_(0, 0.05)
    return head


def nonzero_grads(head: ConStructHead) -> set[str]:
    return {n for n, p in head.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}


def fused_cam_params(head: ConStructHead, maps: dict[str, torch.Tensor]) -> set[str]:
    """Parameters the inference CAM depends on (eval mode, as refine runs it)."""
    head.eval()
    head.zero_grad(set_to_none=True)
    cam = head.fused_cam(head(maps))
    weights = torch.randn(cam.shape, generator=torch.Generator().manual_seed(1))  # no lucky cancellation
    (cam * weights).sum().backward()
    found = nonzero_grads(head)
    head.zero_grad(set_to_none=True)
    head.train()
    return found


def reached(term: str, head: ConStructHead, chead, maps, labels, **settings) -> set[str]:
    """Parameters that `term` alone, as training computes it, gives a non-zero gradient."""
    cfg = TrainConfig(features="unused", **settings)
    bank = MemoryBank(cfg.bank_size, EMBED)
    bank.push(torch.nn.functional.normalize(torch.randn(16, EMBED), dim=-1))  # a bank with past negatives
    head.train()
    head.zero_grad(set_to_none=True)
    losses = objective.compute_losses(head, chead, maps, labels, cfg, bank)
    loss = losses[term]
    assert torch.isfinite(loss), f"{term} is not finite: {loss}"
    if not loss.requires_grad:
        return set()
    loss.backward()
    found = nonzero_grads(head)
    head.zero_grad(set_to_none=True)
    return found


@pytest.mark.parametrize("perturbed", [False, True], ids=["at-init", "adapters-active"])
@pytest.mark.parametrize("term", TERMS)
def test_each_loss_alone_reaches_the_fused_cam(term, perturbed, contrastive_head):
    maps, labels = make_batch()
    head = make_head(perturbed)
    cam_params = fused_cam_params(head, maps)
    assert cam_params, "the fused CAM depends on no parameter?"
    hit = reached(term, head, contrastive_head, maps, labels) & cam_params
    assert hit, f"loss {term} alone gives no gradient to any parameter of the fused CAM"
    if term == "distill":
        # the distilled level (3) is itself a CAM level: its adapter is trained by distillation
        assert any(n.startswith("adapters.3.") for n in hit), sorted(hit)
    if term == "contrast":
        # by default through the prototypes only (the masks are read without gradient)...
        assert hit == {"prototypes"}, sorted(hit)
        # ...and, when asked, through the soft FG/BG masks (the CAM) too
        masks = reached(term, head, contrastive_head, maps, labels, contrast_mask_grad=True) & cam_params
        assert any(n.startswith("adapters.") for n in masks), sorted(masks)


def _detach_output(out: HeadOutput) -> HeadOutput:
    return HeadOutput(features={k: v.detach() for k, v in out.features.items()},
                      cams={k: v.detach() for k, v in out.cams.items()},
                      logits={k: v.detach() for k, v in out.logits.items()})


def detach_term(monkeypatch, term: str) -> None:
    """Make `term` computed from detached inputs, as the reference code does for its extra losses."""
    if term == "cls":
        orig_cls = objective.classification_loss
        monkeypatch.setattr(objective, "classification_loss",
                            lambda out, labels, w: orig_cls(_detach_output(out), labels, w))
    elif term == "distill":
        orig_distill = objective.relational_distillation_loss
        monkeypatch.setattr(objective, "relational_distillation_loss", lambda s, t: orig_distill(s.detach(), t))
    else:
        orig_weights, orig_contrast = objective.soft_region_weights, objective.fg_bg_contrastive_loss
        monkeypatch.setattr(objective, "soft_region_weights", lambda cam, *rest: orig_weights(cam.detach(), *rest))
        monkeypatch.setattr(objective, "fg_bg_contrastive_loss",
                            lambda fg, bg, c, p, bank, tau: orig_contrast(fg, bg, c, p.detach(), bank, tau))


@pytest.mark.parametrize("term", TERMS)
def test_the_check_fails_on_a_detached_term(term, contrastive_head, monkeypatch):
    maps, labels = make_batch()
    head = make_head(perturbed=True)
    cam_params = fused_cam_params(head, maps)
    detach_term(monkeypatch, term)
    assert not (reached(term, head, contrastive_head, maps, labels) & cam_params)
    # the other terms are untouched by the patch and still reach the CAM
    for other in set(TERMS) - {term}:
        assert reached(other, head, contrastive_head, maps, labels) & cam_params, other


def test_contrast_mask_path_alone_reaches_the_adapters(contrastive_head, monkeypatch):
    """With the prototypes detached, the contrastive term still trains the CAM through its soft masks."""
    maps, labels = make_batch()
    head = make_head(perturbed=True)
    orig = objective.fg_bg_contrastive_loss
    monkeypatch.setattr(objective, "fg_bg_contrastive_loss",
                        lambda fg, bg, c, p, bank, tau: orig(fg, bg, c, p.detach(), bank, tau))
    hit = reached("contrast", head, contrastive_head, maps, labels, contrast_mask_grad=True)
    assert any(n.startswith("adapters.") for n in hit & fused_cam_params(head, maps)), sorted(hit)
    assert not reached("contrast", head, contrastive_head, maps, labels)  # the default: masks without gradient


def test_a_distilled_level_must_feed_a_cam():
    """The reference code's second defect (distilling into an adapter no CAM reads) cannot be configured."""
    with pytest.raises(ValueError, match="distilled level"):
        HeadConfig(n_classes=C, cam_levels=(3, 4), bce_weights=(1, 1), fuse_weights=(0.5, 0.5), distill_levels=(2,))
