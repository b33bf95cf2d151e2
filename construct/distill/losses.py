"""The student's objective, one pure function per term (as the head's losses are).

- `soft_mse`: the student's softmax against the teacher's soft scores, classes absent from the tile's image
  labels zeroed in the targets (the teacher's scores are normalised to sum to one per pixel first);
- `boundary_ce`: cross-entropy on the teacher's CRF pseudo-mask, weighted up near its boundaries
  (`boundary_weights`);
- `uncertainty_weighted` (Kendall, Gal & Cipolla 2018) or `fixed_weighted` combine the terms.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-6


def soft_targets(teacher: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """teacher (B, C + 1, H, W) scores ≥ 0 and gate (B, C) in {0, 1} → per-pixel distributions with the
    gated-out classes at zero (background, the last channel, is always kept)."""
    keep = torch.cat([gate.to(teacher.dtype), torch.ones_like(gate[:, :1], dtype=teacher.dtype)], dim=1)
    t = teacher * keep[:, :, None, None]
    return t / t.sum(dim=1, keepdim=True).clamp(min=EPS)


def soft_mse(logits: torch.Tensor, teacher: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between softmax(logits) and the gated teacher distributions."""
    return (logits.softmax(dim=1) - soft_targets(teacher, gate)).pow(2).mean()


def boundary_weights(mask: torch.Tensor, radius: int, boost: float) -> torch.Tensor:
    """mask (B, H, W) integer labels → weights (B, H, W): 1 + boost within `radius` px of a label change."""
    m = mask[:, None].float()
    # a pixel is on a boundary when its 3x3 neighbourhood holds another label (max != min)
    edge = (F.max_pool2d(m, 3, 1, 1) != -F.max_pool2d(-m, 3, 1, 1)).float()
    near = F.max_pool2d(edge, 2 * radius + 1, 1, radius) if radius > 0 else edge
    return 1.0 + boost * near[:, 0]


def boundary_ce(logits: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy against `mask` (B, H, W) labels, a weighted mean with `weights` (B, H, W)."""
    ce = F.cross_entropy(logits, mask.long(), reduction="none")
    return (ce * weights).sum() / weights.sum().clamp(min=EPS)


def uncertainty_weighted(losses: torch.Tensor, log_vars: torch.Tensor) -> torch.Tensor:
    """Σ_i ½ exp(-s_i) L_i + ½ s_i with s_i = log σ_i² learned (Kendall et al. 2018, eq. 7's form): a term
    the model finds noisy is weighted down, and the ½ s_i penalty keeps σ from growing without bound."""
    return (0.5 * torch.exp(-log_vars) * losses + 0.5 * log_vars).sum()


def fixed_weighted(losses: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return (weights * losses).sum()
