"""Refine settings: the paper's inference defaults, overridden by flags; recorded in refine.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from construct.stain.methods import DEFAULT_METHOD as DEFAULT_STAIN_NORM

GATES = ("labels", "gt", "pred", "none")
DEFAULT_PRED_THRESHOLD = 0.5  # classifier probability above which a class gates in (`pred`)
REFINE_META = "refine.json"  # in the mask folder; `construct eval` reads it (random-weights mark)
SCORES_DIR = "scores"
PREDICTIONS_DIR = "predictions"  # default output: RUN/predictions/<split or images folder name>


@dataclass
class RefineConfig:
    """What `refine` reads, how it infers, and where it writes.

    Source: either `data` + `split` (a dataset in the BCSS-WSSS layout) or `images` (any folder of tiles
    of the run's image size, without labels). `gate` None picks the paper's protocol for the source:
    `labels` (file-name labels) for train, `gt` (classes present in the ground-truth mask) for
    valid/test, `pred` (the head's own classifier) for `images`.
    """

    run: Path
    data: Path | None = None
    split: str | None = None
    images: Path | None = None
    out: Path | None = None  # default RUN/predictions/<split> (or the images folder's name)
    gate: str | None = None
    pred_threshold: float = DEFAULT_PRED_THRESHOLD
    # None: the run's default. Head runs: 6 variants (hflip x brightness 0.9/1.0/1.1) and the Dense CRF with
    # the paper's parameters; student runs: one plain forward (True: + its flip) and argmax.
    tta: bool | None = None
    crf: bool | None = None
    batch_size: int = 8  # images per forward (each becomes 6 backbone inputs with TTA)
    workers: int = 2  # CRF (and mask writing) processes; 0 = in the main process
    loader_workers: int = 1  # image decoding processes; 0 = in the main process
    save_scores: bool = False  # also write scores/<stem>.npy, float16 (C + 1, H, W), background last
    head: str = "best"  # best weights (falling back to last when no validation chose one) or last
    conch: str | None = None  # CONCH weights when not at the spec the run recorded (fingerprint-checked)
    device: str = "auto"
    # auto (or None): the run's own --precision if it was given one, else bf16 where the device computes it
    # natively (construct.runtime.resolve_precision). Head runs: CONCH's forward; students: the network's.
    precision: str | None = "auto"
    # Inputs normalised to the run's stain reference (macenko, reinhard, none), estimated once over the source.
    stain_norm: str = DEFAULT_STAIN_NORM

    @property
    def out_path(self) -> Path:
        if self.out is not None:
            return Path(self.out)
        name = Path(self.images).resolve().name if self.images is not None else str(self.split)
        return Path(self.run) / PREDICTIONS_DIR / name
