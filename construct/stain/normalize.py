"""Stain normalisation of image batches to a reference, fitted once per input (split, folder, slide).

Macenko: unmix each pixel's optical density with the input's stain matrix, rescale each stain's
concentration so that its 99th percentile matches the reference's, and remix with the reference's
matrix. What the two stains do not explain (the residual) is kept, so an input already at the reference
comes back unchanged. Reinhard: match the tissue's CIELAB mean and std to the reference's; glass is
blended out so that it stays white.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from construct.errors import ConstructError
from construct.stain.colour import (
    as_rows,
    from_od,
    from_rows,
    lab_to_rgb,
    rgb_to_lab,
    to_od,
)
from construct.stain.estimate import TISSUE_OD, estimate_images, tissue_mask
from construct.stain.methods import METHODS
from construct.stain.reference import DegenerateStain, StainReference

log = logging.getLogger("construct.stain")


def check_method(method: str, flag: str = "--stain-norm") -> None:
    if method not in METHODS:
        raise ConstructError(f"{flag} {method}: expected one of {', '.join(METHODS)}")


@dataclass(frozen=True)
class StainNormalizer:
    """Maps images of the input (estimated as `source`) to the colours of `target`."""

    method: str
    source: StainReference
    target: StainReference

    def __call__(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] → the same, normalised."""
        if self.method == "macenko":
            return self._macenko(images01)
        return self._reinhard(images01)

    def _macenko(self, images01: torch.Tensor) -> torch.Tensor:
        od = to_od(images01.float())
        m_in, m_ref = self.source.matrix(od), self.target.matrix(od)
        conc = torch.einsum("sk,bkhw->bshw", torch.linalg.pinv(m_in), od)
        residual = od - torch.einsum("ks,bshw->bkhw", m_in, conc)
        scale = (torch.tensor(self.target.max_concentrations) / torch.tensor(self.source.max_concentrations)).to(od)
        od = torch.einsum("ks,bshw->bkhw", m_ref, conc * scale[None, :, None, None]) + residual
        return from_od(od).to(images01.dtype)

    def _reinhard(self, images01: torch.Tensor) -> torch.Tensor:
        mean_in, std_in, mean_ref, std_ref = (torch.tensor(v) for v in (
            self.source.lab_mean, self.source.lab_std, self.target.lab_mean, self.target.lab_std))
        b = len(images01)
        return lab_transfer(images01, mean_in.expand(b, 3), (std_ref / std_in).expand(b, 3),
                            (mean_ref - mean_in).expand(b, 3))


def lab_transfer(images01: torch.Tensor, centre: torch.Tensor | None, scale: torch.Tensor,
                 shift: torch.Tensor) -> torch.Tensor:
    """Reinhard's colour transfer with per-image (B, 3) CIELAB factors: each tissue pixel's LAB becomes
    (lab - centre) * scale + centre + shift; `centre` None: each image's own tissue mean. Glass is blended
    out (0 on glass, 1 on tissue whose every channel's density is above TISSUE_OD, linear between) so that
    it stays white."""
    b, _, h, w = images01.shape
    rows = as_rows(images01.float())
    lab = rgb_to_lab(rows).reshape(b, h * w, 3)
    if centre is None:
        centre = tissue_means(lab, tissue_mask(rows).reshape(b, h * w))
    centre, scale, shift = (t.to(lab)[:, None] for t in (centre, scale, shift))
    moved = lab_to_rgb(((lab - centre) * scale + centre + shift).reshape(-1, 3))
    weight = ((to_od(rows).min(dim=1, keepdim=True).values - TISSUE_OD / 2) / (TISSUE_OD / 2)).clamp(0.0, 1.0)
    return from_rows(rows + weight * (moved - rows), images01).to(images01.dtype)


def tissue_means(values: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
    """(B, N, C) values and (B, N) tissue masks → (B, C): each image's mean over its tissue (over all its
    pixels where it has none). One pass, on the values' device: no host sync for a GPU batch."""
    weight = tissue[..., None].to(values)
    count = weight.sum(dim=1)
    return torch.where(count > 0, (values * weight).sum(dim=1) / count.clamp(min=1), values.mean(dim=1))


def fit_normalizer(method: str, reference: StainReference | None,
                   stain: Iterable[torch.Tensor] | StainReference, source: str) -> tuple[StainNormalizer | None, dict]:
    """The normaliser of an input to `reference` (None: normalisation off, or not possible) with the record
    outputs keep of it. `stain`: the input's estimate, or (B, 3, H, W) batches in [0, 1] to estimate it from
    (once, only when normalising). A missing reference or a degenerate input falls back to no
    normalisation with a warning, never an error."""
    check_method(method)
    record: dict = {"requested": method, "applied": "none", "source": source,
                    "reference": reference.to_dict() if reference is not None else None,
                    "input": None, "distance": None, "warning": None}
    if method == "none":
        return None, record
    try:
        estimate = stain if isinstance(stain, StainReference) else estimate_images(stain, source)
    except DegenerateStain as e:
        record["warning"] = f"{source}: stain not estimated ({e}); not normalised"
    else:
        record["input"] = estimate.to_dict()
        if reference is None:
            record["warning"] = f"{source}: the run has no stain reference; not normalised"
        else:
            record["distance"] = reference.distance(estimate)
            record["applied"] = method
    if record["warning"]:
        log.warning("warning: %s", record["warning"])
        return None, record
    return StainNormalizer(method, estimate, reference), record
