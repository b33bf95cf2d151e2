"""What a backbone is, written into every store and run so later phases can check what they read."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass(frozen=True)
class BackboneRecipe:
    """Everything that decides a backbone's features: two equal recipes give identical taps."""

    family: str  # "conch" | "segformer"
    spec: str  # what the user passed: hf:REPO, a path, random, random-tiny
    arch: str  # architecture name, e.g. "conch_ViT-B-16" or "mit-b1-tiny"
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    taps: tuple[str, ...]  # names of the feature maps the backbone returns
    fingerprint: str  # sha256 over the weights actually loaded
    random_weights: bool

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"], d["taps"] = list(self.mean), list(self.std), list(self.taps)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> BackboneRecipe:
        kw = {f.name: d[f.name] for f in fields(cls)}
        kw["mean"], kw["std"], kw["taps"] = tuple(kw["mean"]), tuple(kw["std"]), tuple(kw["taps"])
        return cls(**kw)
