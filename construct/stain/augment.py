"""HED stain augmentation (Tellez et al. 2018): each image's hematoxylin, eosin and DAB concentrations
(colour deconvolution with Ruifrok & Johnston's matrix) scaled by U(1 - s, 1 + s) and shifted by
U(-s, s) x a typical concentration, so a student sees the stain variation of other labs while training."""

from __future__ import annotations

import torch

from construct.stain.colour import DAB, EOSIN, HEMATOXYLIN, from_od, to_od

RUIFROK = (HEMATOXYLIN, EOSIN, DAB)  # rows of the deconvolution matrix
SHIFT_SCALE = 0.3  # typical tissue concentration in these units: shifts are a fraction of it


def hed_matrix(like: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(RUIFROK, dtype=torch.float32)
    return (m / m.norm(dim=1, keepdim=True)).to(like)


def hed_recolour(images01: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] with per-image HED factors `scale` and `shift` (B, 3) → recoloured."""
    od = to_od(images01.float())
    m = hed_matrix(od)
    conc = torch.einsum("sk,bkhw->bshw", torch.linalg.inv(m).T, od)
    conc = conc * scale[:, :, None, None] + shift[:, :, None, None]
    return from_od(torch.einsum("sk,bshw->bkhw", m, conc)).to(images01.dtype)


def hed_jitter(images01: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random HED perturbation of each image (strength s: scale U(1-s, 1+s), shift U(-s, s) x SHIFT_SCALE);
    strength 0 returns the images unchanged."""
    if strength <= 0:
        return images01
    b = images01.shape[0]
    scale = 1 + strength * (2 * torch.rand(b, 3, generator=generator) - 1)
    shift = SHIFT_SCALE * strength * (2 * torch.rand(b, 3, generator=generator) - 1)
    return hed_recolour(images01, scale.to(images01.device), shift.to(images01.device))
