"""The three training losses, as pure functions of tensors (plus the contrastive memory bank)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from construct.head.model import HeadOutput


def classification_loss(out: HeadOutput, labels: torch.Tensor, level_weights: dict[int, float]) -> torch.Tensor:
    """Weighted multi-label BCE of each CAM level's GAP logits against the image labels."""
    target = labels.float()
    return sum(w * F.binary_cross_entropy_with_logits(out.logits[k], target) for k, w in level_weights.items())


def affinity(x: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) → (B, hw, hw) cosine affinities of its tokens."""
    t = F.normalize(x.flatten(2).transpose(1, 2), dim=-1)
    return t @ t.transpose(1, 2)


def relational_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE between token affinity matrices of the student level and the teacher stage on the same grid."""
    size = student.shape[-2:]
    if teacher.shape[-2:] != size:
        teacher = F.interpolate(teacher, size=size, mode="bilinear", align_corners=False)
    return F.mse_loss(affinity(student), affinity(teacher.float()))


def soft_region_weights(cam: torch.Tensor, threshold: float, softness: float, scope: str = "class") -> torch.Tensor:
    """Soft foreground membership of each token: sigmoid((cam / max - threshold) / softness).
    A hard `cam > threshold * max` would cut the gradient to the CAM. `scope`: the max of each
    (image, class) map (`class`), or of the image's maps of all classes (`image`, the authors')."""
    per_class = cam.flatten(2).max(dim=2).values  # (B, C)
    peak = per_class if scope == "class" else per_class.max(dim=1, keepdim=True).values
    peak = peak[:, :, None, None].clamp(min=1e-6)
    return torch.sigmoid((cam / peak - threshold) / softness)


def fg_bg_contrastive_loss(
    fg: torch.Tensor, bg: torch.Tensor, cls: torch.Tensor, prototypes: torch.Tensor,
    bank: torch.Tensor | None, tau: float,
) -> torch.Tensor:
    """InfoNCE over region embeddings (M, E) of class `cls` (M,) against L2-normalised prototypes (C, E).

    FG of class c: positive prototype c; negatives the other prototypes and the memory bank of past
    background embeddings. BG of class c: positives the other prototypes, negative prototype c.
    """
    p = F.normalize(prototypes, dim=-1)
    n_cls = p.shape[0]
    sim_fg = fg @ p.t() / tau  # (M, C)
    own = F.one_hot(cls, n_cls).bool()
    neg_proto = sim_fg.masked_fill(own, float("-inf"))
    pos = sim_fg[own]
    parts = [pos[:, None], neg_proto]
    if bank is not None and bank.numel():
        parts.append(fg @ bank.t() / tau)
    logits = torch.cat(parts, dim=1)
    loss_fg = -(pos - torch.logsumexp(logits, dim=1)).mean()
    if n_cls < 2:
        return loss_fg
    sim_bg = bg @ p.t() / tau
    loss_bg = -(torch.logsumexp(sim_bg.masked_fill(own, float("-inf")), dim=1) - torch.logsumexp(sim_bg, dim=1)).mean()
    return loss_fg + loss_bg


class MemoryBank:
    """FIFO of past background embeddings (detached), the contrastive term's extra negatives.

    init `empty` holds only embeddings pushed so far; `random` starts full of random unit vectors drawn
    from `seed` (the authors' bank), which background embeddings then replace, oldest first."""

    def __init__(self, size: int, dim: int, init: str = "empty", seed: int = 0):
        self.ptr = 0
        if init == "random":
            gen = torch.Generator().manual_seed(seed)
            self.buffer = F.normalize(torch.randn(size, dim, generator=gen), dim=1)
            self.count = size
        else:
            self.buffer = torch.zeros(size, dim)
            self.count = 0

    def get(self) -> torch.Tensor:
        return self.buffer[: self.count].clone()  # push() writes in place before backward

    def push(self, x: torch.Tensor) -> None:
        x = x.detach().to(self.buffer.device, self.buffer.dtype)[-len(self.buffer):]
        idx = (self.ptr + torch.arange(len(x))) % len(self.buffer)
        self.buffer[idx] = x
        self.ptr = int((self.ptr + len(x)) % len(self.buffer))
        self.count = min(self.count + len(x), len(self.buffer))

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.clone(), "ptr": self.ptr, "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.buffer.copy_(state["buffer"])
        self.ptr, self.count = int(state["ptr"]), int(state["count"])
