"""Joint dihedral augmentation: one random flip/rot90 per sample, applied to every stored map."""

from __future__ import annotations

import torch

N_DIHEDRAL = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square on the last two axes: k % 4 quarter turns, then a flip if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def draw_symmetries(n: int, generator: torch.Generator) -> list[int]:
    """One symmetry per sample of a batch of n."""
    return torch.randint(0, N_DIHEDRAL, (n,), generator=generator).tolist()


def apply_symmetries(maps: dict[str, torch.Tensor], ks: list[int]) -> dict[str, torch.Tensor]:
    """maps: name → (B, ..., H, W) with square H = W; sample i gets symmetry ks[i] in every map."""
    return {name: torch.stack([dihedral(x[i], k) for i, k in enumerate(ks)]) for name, x in maps.items()}
