"""Estimating a StainReference from tissue pixels (Macenko et al. 2009; Reinhard et al. 2001).

Tissue: every channel's optical density above TISSUE_OD (glass is near zero) and the pixel not near black
(dust, folds, scanner edges). Estimation pools the tissue pixels of many tiles (a split, a folder, a
slide): one estimate per input, so tiles showing one tissue do not each get their own colours.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from construct.stain.colour import EOSIN, HEMATOXYLIN, as_rows, rgb_to_lab, to_od
from construct.stain.reference import DegenerateStain, StainReference

TISSUE_OD = 0.15  # Macenko's beta: below it in any channel a pixel is (nearly) transparent
BLACK_INTENSITY = 0.1  # mean RGB below it: not stain (folds, dust, black ink)
ANGLE_PERCENTILE = 0.01  # Macenko's alpha: robust extremes of the stain angles
CONCENTRATION_PERCENTILE = 0.99
MAX_PIXELS = 200_000  # pooled tissue pixels kept (a fixed-seed sample): plenty for 2 vectors and 6 moments
MIN_PIXELS = 2_500  # about 5% of one 224 px tile
SEED = 0
# Plausible H&E: each estimated stain within this angle of the textbook vector (Ruifrok & Johnston 2001),
# and the two stains at least MIN_STAIN_ANGLE apart. Outside them: one stain only, or ink.
MAX_ANGLE_FROM_TEXTBOOK = 40.0
MIN_STAIN_ANGLE = 10.0
MIN_LAB_STD = 1.0


def tissue_mask(rows01: torch.Tensor) -> torch.Tensor:
    """(N, 3) RGB in [0, 1] → (N,) bool: pixels that are stained tissue."""
    return (to_od(rows01) > TISSUE_OD).all(dim=1) & (rows01.mean(dim=1) > BLACK_INTENSITY)


def tissue_pixels(batches: Iterable[torch.Tensor], limit: int = MAX_PIXELS) -> torch.Tensor:
    """Pooled tissue pixels (N, 3) of image batches (B, 3, H, W) in [0, 1], at most `limit`, drawn with a
    fixed seed (the same input gives the same estimate)."""
    gen = torch.Generator().manual_seed(SEED)
    kept: list[torch.Tensor] = []
    for images01 in batches:
        rows = as_rows(images01.detach().float().cpu())
        rows = rows[tissue_mask(rows)]
        if len(rows) > limit:
            rows = rows[torch.randperm(len(rows), generator=gen)[:limit]]
        kept.append(rows)
    pooled = torch.cat(kept) if kept else torch.zeros(0, 3)
    if len(pooled) > limit:
        pooled = pooled[torch.randperm(len(pooled), generator=gen)[:limit]]
    return pooled


def _angle(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = float((a @ b) / (a.norm() * b.norm()))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def macenko_matrix(od: torch.Tensor) -> torch.Tensor:
    """(N, 3) optical densities → (3, 2) unit stain vectors, hematoxylin first (Macenko's plane method)."""
    od = od.double()
    _, vectors = torch.linalg.eigh(torch.cov(od.T))
    plane = vectors[:, 1:]  # the two largest eigenvectors span the stains
    plane = plane * torch.where(plane.sum(0) < 0, -1.0, 1.0)  # densities are positive
    proj = od @ plane
    phi = torch.atan2(proj[:, 1], proj[:, 0])
    lo, hi = torch.quantile(phi, torch.tensor([ANGLE_PERCENTILE, 1 - ANGLE_PERCENTILE], dtype=phi.dtype))
    v1 = plane @ torch.stack([torch.cos(lo), torch.sin(lo)])
    v2 = plane @ torch.stack([torch.cos(hi), torch.sin(hi)])
    # Hematoxylin absorbs more red than eosin does.
    h, e = (v1, v2) if v1[0] > v2[0] else (v2, v1)
    m = torch.stack([h, e], dim=1)
    return (m / m.norm(dim=0)).float()


def concentrations(od: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """(N, 3) densities, (3, 2) stains → (N, 2) least-squares concentrations."""
    return od @ torch.linalg.pinv(matrix).T


def _check_stains(matrix: torch.Tensor) -> None:
    h, e = matrix[:, 0], matrix[:, 1]
    apart = _angle(h, e)
    if apart < MIN_STAIN_ANGLE:
        raise DegenerateStain(f"one stain only (hematoxylin and eosin {apart:.1f} degrees apart)")
    for name, v, book in (("hematoxylin", h, HEMATOXYLIN), ("eosin", e, EOSIN)):
        off = _angle(v, torch.tensor(book))
        if off > MAX_ANGLE_FROM_TEXTBOOK or bool((v < -0.1).any()):
            raise DegenerateStain(f"the {name} estimate is {off:.0f} degrees from H&E's (ink or another stain?)")


def estimate_reference(pixels01: torch.Tensor, source: str = "") -> StainReference:
    """A StainReference from pooled tissue pixels (N, 3) in [0, 1] (see `tissue_pixels`); raises
    DegenerateStain when they cannot give one."""
    if len(pixels01) < MIN_PIXELS:
        raise DegenerateStain(f"too little tissue ({len(pixels01)} pixels, at least {MIN_PIXELS} needed)")
    od = to_od(pixels01.float())
    matrix = macenko_matrix(od)
    _check_stains(matrix)
    conc = concentrations(od, matrix)
    max_c = torch.quantile(conc, CONCENTRATION_PERCENTILE, dim=0)
    if bool((max_c <= TISSUE_OD / 10).any()):
        raise DegenerateStain("one stain barely present (its 99th percentile concentration is near zero)")
    lab = rgb_to_lab(pixels01.float())
    std = lab.std(dim=0)
    if bool((std < MIN_LAB_STD).any()):
        raise DegenerateStain("tissue of a single flat colour")
    return StainReference(tuple(tuple(round(v, 6) for v in r) for r in matrix.tolist()),
                          tuple(round(v, 6) for v in max_c.tolist()), tuple(round(v, 4) for v in lab.mean(0).tolist()),
                          tuple(round(v, 4) for v in std.tolist()), len(pixels01), source)


def estimate_images(batches: Iterable[torch.Tensor], source: str = "") -> StainReference:
    """The reference of image batches (B, 3, H, W) in [0, 1], pooled."""
    return estimate_reference(tissue_pixels(batches), source)
