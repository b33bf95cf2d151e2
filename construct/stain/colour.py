"""Colour spaces of stain work, in torch on (..., 3, ...) channel-first or (N, 3) pixel rows.

Optical density (Beer-Lambert): OD = -ln(I) with I in [0, 1] relative to white glass; stains add in OD.
CIELAB (D65, sRGB): the space of Reinhard's colour transfer, where a mean/std match moves colours as the
eye sees them.
"""

from __future__ import annotations

import torch

# The RGB optical density of each stain (Ruifrok & Johnston 2001, as scikit-image).
HEMATOXYLIN = (0.65, 0.70, 0.29)
EOSIN = (0.07, 0.99, 0.11)
DAB = (0.27, 0.57, 0.78)

# Darkest intensity kept: ln(255) bounds OD so that a black pixel does not dominate a least-squares fit.
MIN_INTENSITY = 1.0 / 255.0
_D65_WHITE = (0.95047, 1.0, 1.08883)
_RGB_TO_XYZ = ((0.412453, 0.357580, 0.180423),
               (0.212671, 0.715160, 0.072169),
               (0.019334, 0.119193, 0.950227))
_DELTA = 6.0 / 29.0


def to_od(rgb01: torch.Tensor) -> torch.Tensor:
    return -torch.log(rgb01.clamp(MIN_INTENSITY, 1.0))


def from_od(od: torch.Tensor) -> torch.Tensor:
    return torch.exp(-od).clamp(0.0, 1.0)


def _matrix(values, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def rgb_to_lab(rows: torch.Tensor) -> torch.Tensor:
    """(N, 3) sRGB in [0, 1] → (N, 3) CIELAB (L in 0..100)."""
    linear = torch.where(rows <= 0.04045, rows / 12.92, ((rows.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _matrix(_RGB_TO_XYZ, rows).T / _matrix(_D65_WHITE, rows)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp(min=1e-12) ** (1.0 / 3.0), xyz / (3 * _DELTA ** 2) + 4.0 / 29.0)
    return torch.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], dim=1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """(N, 3) CIELAB → (N, 3) sRGB clamped to [0, 1]."""
    fy = (lab[:, 0] + 16.0) / 116.0
    f = torch.stack([fy + lab[:, 1] / 500.0, fy, fy - lab[:, 2] / 200.0], dim=1)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4.0 / 29.0)) * _matrix(_D65_WHITE, lab)
    linear = (xyz @ torch.linalg.inv(_matrix(_RGB_TO_XYZ, lab)).T).clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1.0 / 2.4) - 0.055).clamp(0.0, 1.0)


def as_rows(images01: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B*H*W, 3)."""
    return images01.permute(0, 2, 3, 1).reshape(-1, 3)


def from_rows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `as_rows` for an image batch shaped like `like`."""
    b, _, h, w = like.shape
    return rows.reshape(b, h, w, 3).permute(0, 3, 1, 2).contiguous()
