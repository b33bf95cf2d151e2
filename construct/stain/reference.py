"""A stain reference: the colour a model was trained on, as Macenko and Reinhard describe it.

Macenko: the unit optical-density vectors of hematoxylin and eosin (a 3x2 stain matrix, H first) and the
99th percentile of each stain's concentration. Reinhard: mean and std of the tissue pixels in CIELAB. Both
come from tissue pixels only (glass and near-black excluded). Written as JSON (runs, stores, outputs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from construct.errors import ConstructError

FORMAT = "construct-stain-reference"


class DegenerateStain(ValueError):
    """The pixels do not show two stains clearly enough to estimate them (glass, one stain, ink)."""


@dataclass(frozen=True)
class StainReference:
    stain_matrix: tuple[tuple[float, float], ...]  # (3, 2): RGB optical density of H (column 0) and E
    max_concentrations: tuple[float, float]  # 99th percentile of H and E concentrations
    lab_mean: tuple[float, float, float]
    lab_std: tuple[float, float, float]
    n_pixels: int  # tissue pixels it was estimated from
    source: str = ""  # what it was estimated from (a split, a folder, a slide)

    def matrix(self, like: torch.Tensor | None = None) -> torch.Tensor:
        m = torch.tensor(self.stain_matrix, dtype=torch.float32)
        return m if like is None else m.to(like)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "stain_matrix": [list(r) for r in self.stain_matrix],
                "max_concentrations": list(self.max_concentrations), "lab_mean": list(self.lab_mean),
                "lab_std": list(self.lab_std), "n_pixels": self.n_pixels, "source": self.source}

    @classmethod
    def from_dict(cls, d: dict) -> StainReference:
        try:
            matrix = tuple(tuple(float(v) for v in row) for row in d["stain_matrix"])
            ref = cls(matrix, tuple(float(v) for v in d["max_concentrations"]),
                      tuple(float(v) for v in d["lab_mean"]), tuple(float(v) for v in d["lab_std"]),
                      int(d["n_pixels"]), str(d.get("source", "")))
        except (KeyError, TypeError, ValueError) as e:
            raise ConstructError(f"stain reference: malformed ({type(e).__name__}: {e})") from e
        if len(ref.stain_matrix) != 3 or any(len(r) != 2 for r in ref.stain_matrix) \
                or len(ref.max_concentrations) != 2 or len(ref.lab_mean) != 3 or len(ref.lab_std) != 3:
            raise ConstructError("stain reference: expected a 3x2 stain matrix, 2 concentrations, 3 LAB means/stds")
        return ref

    def save(self, path: Path) -> None:
        from construct.atomic import write_text_atomic

        write_text_atomic(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> StainReference:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise ConstructError(f"{path}: unreadable stain reference ({e})") from e

    def distance(self, other: StainReference) -> dict:
        """How far `other` lies from this reference: the angle between each stain's vectors (degrees), the
        ratio of its concentration percentiles to ours, and the CIELAB distance of the tissue means (ΔE76;
        about 2 is just noticeable, above 10 a different-looking stain)."""
        mine, theirs = self.matrix(), other.matrix()
        cos = (mine * theirs).sum(0) / (mine.norm(dim=0) * theirs.norm(dim=0))
        angles = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).tolist()
        delta_e = math.dist(self.lab_mean, other.lab_mean)
        return {"delta_e": round(delta_e, 2), "h_angle_deg": round(angles[0], 2), "e_angle_deg": round(angles[1], 2),
                "h_scale": round(other.max_concentrations[0] / self.max_concentrations[0], 3),
                "e_scale": round(other.max_concentrations[1] / self.max_concentrations[1], 3)}
