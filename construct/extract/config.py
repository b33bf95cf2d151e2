"""Extraction settings: the paper's defaults, overridden by flags; saved into every store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from construct.backbones.registry import DEFAULT_SPECS

PRECISIONS = ("fp32", "bf16")


@dataclass
class ExtractConfig:
    data: Path
    split: str = "train"
    out: Path | None = None  # default features/<split>.zarr
    conch: str = DEFAULT_SPECS["conch"]
    segformer: str = DEFAULT_SPECS["segformer"]
    classes: str = "bcss"
    image_size: int = 224
    batch_size: int = 32
    device: str = "auto"
    precision: str = "fp32"
    store_dtype: str = "float16"
    conch_blocks: tuple[int, ...] = (3, 6, 9, 12)
    seg_stages: tuple[int, ...] = (3,)  # the distillation stage; others are never read by train
    keep_cls: bool = True
    shard_rows: int = 32
    workers: int = 2
    limit: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path("features") / f"{self.split}.zarr"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out_path)
        d["conch_blocks"], d["seg_stages"] = list(self.conch_blocks), list(self.seg_stages)
        return d
