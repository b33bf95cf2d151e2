"""How the step's loss terms become the total that is minimised, and the weight each term gets.

`fixed`: the configured weights (the paper's 1.0 / 1.5 / 0.2). `uncertainty` (Kendall, Gal and Cipolla,
CVPR 2018): each term k gets a learnable log-variance s_k and contributes exp(-s_k)·w_k·L_k + s_k, so a
term's learned factor exp(-s_k) settles near 1 / (w_k·L_k): a term that cannot be lowered (InfoNCE on
embeddings that carry no class signal saturates near log of its number of candidates) is weighted down by
its own size, while the classifier's weight grows as its loss falls. It settles only if the s_k can move
that far (log(w_k·L_k), about 1.2 for the contrast term) within the schedule: they train at their own
`loss_weighting_lr` (construct.train.trainer.build_optimizer), since at the head's lr 2e-5 Adam moves
them by about 0.05 in the paper's 4,684 steps. Both can ramp the auxiliary terms in from 0 over the
first `aux_ramp` of the steps, so they act on CAMs that already follow the image labels.
"""

from __future__ import annotations

import torch
from torch import nn

from construct.train.config import TrainConfig

TERMS = ("cls", "distill", "contrast")
AUXILIARY = ("distill", "contrast")


class LossWeighting(nn.Module):
    def __init__(self, cfg: TrainConfig, total_steps: int):
        super().__init__()
        self.base = {"cls": cfg.w_cls, "distill": cfg.w_distill, "contrast": cfg.w_contrast}
        self.ramp_steps = round(cfg.aux_ramp * total_steps)
        self.learned = cfg.loss_weighting == "uncertainty"
        # Present even when fixed, so that checkpoints have one shape; trained only when learned.
        self.log_vars = nn.Parameter(torch.zeros(len(TERMS)), requires_grad=self.learned)

    def ramp(self, step: int) -> float:
        """0 → 1 linearly over the ramp's steps (`step` counts from 0)."""
        return 1.0 if self.ramp_steps == 0 else min(1.0, (step + 1) / self.ramp_steps)

    def weights(self, step: int) -> dict[str, float]:
        """Each term's effective weight at this step (the learned factor included)."""
        scale = torch.exp(-self.log_vars.detach()).tolist() if self.learned else [1.0] * len(TERMS)
        return {name: self._ramped(name, step) * self.base[name] * scale[i] for i, name in enumerate(TERMS)}

    def _ramped(self, name: str, step: int) -> float:
        return self.ramp(step) if name in AUXILIARY else 1.0

    def forward(self, losses: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """The total to minimise from the present terms (`cls`, and `distill`/`contrast` when on)."""
        total = torch.zeros((), device=next(iter(losses.values())).device)
        for i, name in enumerate(TERMS):
            if name not in losses:
                continue
            r, w = self._ramped(name, step), self.base[name]
            if self.learned:
                # The ramp scales the whole term, s_k included: a term at weight 0 must not drive s_k down.
                s = self.log_vars[i]
                total = total + r * (torch.exp(-s) * w * losses[name] + s)
            else:
                total = total + r * w * losses[name]
        return total
