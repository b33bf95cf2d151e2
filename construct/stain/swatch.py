"""Swatches: a stain reference drawn as colours a pathologist can compare at a glance (reports)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from construct.stain.colour import from_od, lab_to_rgb
from construct.stain.reference import StainReference

LEVELS = (0.25, 0.5, 1.0)  # fractions of each stain's 99th-percentile concentration
PATCH = 28


def swatch(ref: StainReference) -> Image.Image:
    """One row of patches: hematoxylin alone at LEVELS, eosin alone at LEVELS, both at half, and the
    tissue's mean colour (CIELAB mean)."""
    m = ref.matrix()
    h_max, e_max = ref.max_concentrations
    conc = [(f * h_max, 0.0) for f in LEVELS] + [(0.0, f * e_max) for f in LEVELS] + [(h_max / 2, e_max / 2)]
    colours = from_od(torch.tensor(conc) @ m.T)
    colours = torch.cat([colours, lab_to_rgb(torch.tensor([ref.lab_mean]))])
    row = (colours.numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(np.repeat(np.repeat(row[None], PATCH, axis=0), PATCH, axis=1))
