"""Extraction settings: the paper's defaults, overridden by flags; saved into every store."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from construct.backbones.registry import DEFAULT_SPECS

# µm/px of BCSS-WSSS tiles: 224-px sliding-window crops of BCSS regions (released at 0.25 µm/px,
# Amgad et al. 2019), not resized; their file names carry it (`..._MPP-0.2500+0[1101].png`, the
# dataset's Readme.txt). Recorded in the store so that `construct slide` tiles at the same resolution.
BCSS_WSSS_MPP = 0.25


@dataclass
class ExtractConfig:
    data: Path
    split: str = "train"
    out: Path | None = None  # default features/<split>.zarr
    conch: str = DEFAULT_SPECS["conch"]
    segformer: str = DEFAULT_SPECS["segformer"]
    classes: str = "bcss"
    image_size: int = 224
    mpp: float = BCSS_WSSS_MPP  # µm/px of the training tiles
    batch_size: int = 32
    device: str = "auto"
    precision: str = "auto"  # the backbones' forward: auto, fp32 or bf16 (the store records fp32 or bf16)
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
