"""Stain augmentation, so that a student sees the stain variation of other labs while training.

HED (Tellez et al. 2018): each image's hematoxylin, eosin and DAB concentrations (colour deconvolution
with Ruifrok & Johnston's matrix) scaled by U(1 - s, 1 + s) and shifted by U(-s, s) x a typical
concentration. LAB: a random Reinhard colour transfer of each image (its tissue's CIELAB mean moved, its
spread scaled), the kind of change stain normalisation makes at inference, so that what normalisation
leaves over (a split's mean colour moved by its tissue mix, not only by its stain) costs the student little.
"""

from __future__ import annotations

import torch

from construct.stain.colour import DAB, EOSIN, HEMATOXYLIN, as_rows, from_od, rgb_to_lab, to_od
from construct.stain.estimate import tissue_mask
from construct.stain.normalize import lab_transfer, tissue_means

RUIFROK = (HEMATOXYLIN, EOSIN, DAB)  # rows of the deconvolution matrix
SHIFT_SCALE = 0.3  # typical tissue concentration in these units: shifts are a fraction of it
LAB_SHIFT_SCALE = 50.0  # CIELAB units of a strength-1 mean shift (0.2: up to 10, a clearly other lab's colour)


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


def lab_jitter(images01: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random Reinhard-style transfer of each image (strength s: its tissue's CIELAB mean shifted by
    U(-s, s) x LAB_SHIFT_SCALE per channel, its spread about that mean scaled by U(1-s, 1+s)); strength 0
    returns the images unchanged."""
    if strength <= 0:
        return images01
    b = images01.shape[0]
    scale = 1 + strength * (2 * torch.rand(b, 3, generator=generator) - 1)
    shift = LAB_SHIFT_SCALE * strength * (2 * torch.rand(b, 3, generator=generator) - 1)
    return lab_transfer(images01, None, scale, shift)


def tissue_lab_means(images01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, 3): each image's mean CIELAB colour over its tissue (all pixels if it has none)."""
    b = images01.shape[0]
    rows = as_rows(images01.detach().float())
    return tissue_means(rgb_to_lab(rows).reshape(b, -1, 3), tissue_mask(rows).reshape(b, -1))
