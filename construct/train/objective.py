"""One training step's losses: classification, structural distillation, FG/BG contrast."""

from __future__ import annotations

import torch

from construct.ddp import BatchShare, unwrap
from construct.head.model import ConStructHead
from construct.head.pooler import ContrastiveHead
from construct.runtime import autocast
from construct.train.config import TrainConfig
from construct.train.losses import (
    MemoryBank,
    classification_loss,
    fg_bg_contrastive_loss,
    relational_distillation_loss,
    soft_region_weights,
)
from construct.train.weighting import LossWeighting

CONTRAST_TOKENS = "conch_b12"  # the contrastive head reads the last block, as CONCH does


def teacher_tap(level: int) -> str:
    """The SegFormer stage distilled into a head level (same pyramid position)."""
    return f"seg_s{level}"


def compute_losses(
    head: ConStructHead, contrastive_head: ContrastiveHead | None, maps: dict[str, torch.Tensor],
    labels: torch.Tensor, cfg: TrainConfig, bank: MemoryBank | None, share: BatchShare | None = None,
    weighting: LossWeighting | None = None, step: int = 0, precision: str = "fp32",
) -> dict[str, torch.Tensor]:
    """maps: `conch_b*` (B, D, g, g) and `seg_s*` (B, C, h, w). Returns each term and the total that
    `weighting` makes of them at `step` (default: the configured fixed weights).

    `head` may be the head in DDP; `share` says which rows of the global batch these are (default: all).
    `precision` is the head forward's (bf16: autocast); every loss is computed in fp32."""
    share = share or BatchShare(len(labels))
    net = unwrap(head)
    with autocast(labels.device, precision):
        out = head(maps)
    out = out.float()
    hc = net.config
    rows = share.weight(len(labels))  # per-row means of a part, weighted to the global batch's mean
    losses = {"cls": rows * classification_loss(out, labels, dict(zip(hc.cam_levels, hc.bce_weights)))}
    if cfg.distill:
        terms = [relational_distillation_loss(out.features[k], maps[teacher_tap(k)]) for k in hc.distill_levels]
        losses["distill"] = rows * torch.stack(terms).mean()
    if cfg.contrast and contrastive_head is not None and share.any(labels):
        gate = labels.float()[:, :, None, None]
        cam = net.fused_cam(out) * gate
        if not cfg.contrast_mask_grad:  # see TrainConfig.contrast_mask_grad
            cam = cam.detach()
        weights = soft_region_weights(cam, cfg.fg_threshold, cfg.fg_softness, cfg.fg_threshold_scope).flatten(2)
        tokens = maps[CONTRAST_TOKENS].flatten(2).transpose(1, 2)  # (B, N, D)
        # Both regions of every class in one call: the tokens' keys and values are computed once.
        regions = contrastive_head.pool_masked(tokens, torch.cat([weights, 1 - weights], dim=1))
        fg_all, bg_all = regions.chunk(2, dim=1)
        b_idx, c_idx = labels.bool().nonzero(as_tuple=True)
        # Every process scores the (row, class) pairs of the whole batch: the mean over pairs and the memory
        # bank are then the ones a single process has, and the gather hands each process's rows their gradient.
        fg, bg, c_idx = (share.gather(t) for t in (fg_all[b_idx, c_idx], bg_all[b_idx, c_idx], c_idx))
        losses["contrast"] = fg_bg_contrastive_loss(
            fg, bg, c_idx, net.prototypes, bank.get().to(fg.device) if bank else None, cfg.contrast_tau)
        if bank is not None:
            bank.push(bg)
    weighting = weighting if weighting is not None else LossWeighting(cfg, total_steps=1)
    losses["total"] = weighting(losses, step)
    return losses
