"""Training settings, layered: dataclass defaults (the paper's) → preset → config file → flags."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import tomllib

from construct.errors import ConstructError
from construct.runtime import check_precision
from construct.store.in_memory import DEFAULT_MEMORY_GB


@dataclass
class TrainConfig:
    features: str = ""
    val_features: str | None = None
    out: str = "runs/construct"
    preset: str = "paper"
    # The schedule counts optimiser steps, so it does not follow the dataset's size. The paper's 2 epochs
    # of BCSS-WSSS train (23,422 tiles, 2,342 full batches of 10) are 4,684 steps.
    steps: int | None = 4684
    epochs: float | None = None  # convenience: converted to steps over the store's full batches
    warmup: float = 0.0  # fraction of the steps over which the lr rises linearly, before the poly decay
    batch_size: int = 10
    lr: float = 2e-5
    weight_decay: float = 1e-3
    # adamw (the paper's); sgd (plain, no momentum) takes steps proportional to the gradient, which the
    # DDP equivalence tests compare: Adam's first step moves a weight by about lr whatever its gradient's
    # size, so rounding noise in a near-zero gradient becomes a step of lr.
    optimizer: str = "adamw"
    poly_power: float = 1.0  # as the authors' and PBIP's configs (scheduler.power)
    seed: int = 0
    # Loss weights: classification, structural distillation, FG/BG contrast (construct.train.weighting).
    w_cls: float = 1.0
    w_distill: float = 1.5
    w_contrast: float = 0.2
    loss_weighting: str = "fixed"  # fixed: the weights above; uncertainty: learned (Kendall et al. 2018)
    # Learning rate of the learned log-variances (uncertainty weighting), poly-decayed like the head's.
    # They must move by about log(1 / (w·L)) (~1.2 for the contrast term) within the schedule; at the
    # head's lr 2e-5 Adam moves them ~0.05 over the paper's 4,684 steps (README, "Deviations").
    loss_weighting_lr: float = 1e-2
    aux_ramp: float = 0.0  # fraction of the steps over which distill and contrast weights rise from 0
    distill: bool = True
    contrast: bool = True
    text_init: bool = True
    # Head (see construct.head.HeadConfig).
    cam_levels: tuple[int, ...] = (2, 3, 4)
    bce_weights: tuple[float, ...] = (0.1, 1.0, 1.0)
    fuse_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    distill_levels: tuple[int, ...] = (3,)
    n_ratio: float = 0.5
    # Bilinear upsampling of the CAMs to the image with align_corners (the authors' choice). False keeps
    # each cell's centre where its patch is: True shifts border cells by up to half a cell.
    cam_align_corners: bool = False
    # Contrastive term.
    contrast_tau: float = 0.07
    bank_size: int = 2048
    bank_init: str = "empty"  # empty: only past BG embeddings; random: full of random unit vectors (authors)
    fg_threshold: float = 0.5  # of each CAM's max, as in the paper
    fg_threshold_scope: str = "class"  # the max of each (image, class) CAM; image: over all classes (authors)
    fg_softness: float = 0.05  # width of the soft threshold, keeps the mask differentiable
    # Whether the contrastive term's gradient may reshape its FG/BG masks (the CAM) directly. Off: it
    # reaches the CAM through the prototypes only. Measured (README, "Loss balance"): through the masks,
    # InfoNCE is lowered by carving the masks into whatever regions pool close to the prototypes, and at
    # weight 0.2 it took a BCE-only head from 66.9 to 24.5 val mIoU on real pixels; through the
    # prototypes only, 66.8.
    contrast_mask_grad: bool = False
    augment: bool = True
    # Stores whose training arrays fit in this many GiB are read into RAM once (per process) and sliced
    # there; larger ones stream from disk, batch by batch.
    memory_gb: float = DEFAULT_MEMORY_GB
    # Store reading processes; None: 0 on CPU, where a loader process takes a core from the step's own
    # threads (benchmarks/README.md, two_phase), 1 with a GPU, where reads overlap the device's work.
    workers: int | None = None
    device: str = "auto"
    # The head forward's, in training and validation (losses and optimizer state stay fp32); auto: bf16
    # where the device computes it natively (construct.runtime.resolve_precision). Recorded in the run.
    precision: str = "auto"
    checkpoint_every: int = 200  # steps between resumable checkpoints (plus every validation)
    eval_every: int | None = None  # steps between validations and metrics records; None: one epoch,
    # but no more than MAX_RECORDS of them in a run
    log_every: int = 10  # steps between lines of train.log (each term's loss and weight)

    def total_steps(self, batches_per_epoch: int) -> int:
        if self.epochs is not None:
            return max(1, math.ceil(self.epochs * batches_per_epoch))
        return int(self.steps)

    def record_every(self, batches_per_epoch: int) -> int:
        if self.eval_every is not None:
            return self.eval_every
        return max(batches_per_epoch, math.ceil(self.total_steps(batches_per_epoch) / MAX_RECORDS))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def loader_workers(self, device_type: str) -> int:
        if self.workers is not None:
            return self.workers
        return 0 if device_type == "cpu" else 1


OPTIMIZERS = ("adamw", "sgd")
LOSS_WEIGHTINGS = ("fixed", "uncertainty")
BANK_INITS = ("empty", "random")
THRESHOLD_SCOPES = ("class", "image")
MAX_RECORDS = 30  # validations in a run with eval_every unset: an epoch each, or fewer on small stores

PRESETS: dict[str, dict] = {
    # The paper's settings, and the authors' code's choices where the paper leaves them open (README,
    # "Deviations"): CAMs upsampled with align_corners, a memory bank of random unit vectors from step 1,
    # the FG threshold taken over all classes of an image.
    "paper": {"cam_align_corners": True, "bank_init": "random", "fg_threshold_scope": "image"},
    # A short schedule that learns on a few hundred tiles, real or synthetic: 720 steps (30 passes over
    # 240 tiles at batch 10) at lr 1e-3 after a 5% warm-up. On the real-pixel check (benchmarks/README.md)
    # the paper's lr 2e-5 learns nothing in that many steps, and lr 1e-2 overshoots.
    "demo": {"steps": 720, "lr": 1e-3, "warmup": 0.05},
}


def read_config_file(path: Path) -> dict:
    if not path.is_file():
        raise ConstructError(f"{path}: config file not found")
    try:
        data = tomllib.loads(path.read_text()) if path.suffix == ".toml" else json.loads(path.read_text())
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConstructError(f"{path}: not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({e})") from e
    if not isinstance(data, dict):
        raise ConstructError(f"{path}: expected a table/object of settings")
    return data


def _apply_layer(values: dict, layer: dict, where: str) -> None:
    """A layer's steps or epochs replaces the other one set below it (a preset's steps, say)."""
    if layer.get("steps") is not None and layer.get("epochs") is not None:
        raise ConstructError(f"{where}: give steps or epochs, not both")
    if layer.get("epochs") is not None:
        values["steps"] = None
    elif layer.get("steps") is not None:
        values["epochs"] = None
    values.update(layer)


def resolve_config(preset: str = "paper", config_file: Path | None = None, **flags) -> TrainConfig:
    """Apply the layers in order; flags given as None are left to the layers below them."""
    if preset not in PRESETS:
        raise ConstructError(f"--preset {preset}: expected one of {', '.join(PRESETS)}")
    known = {f.name: f for f in fields(TrainConfig)}
    values: dict = {"preset": preset, **PRESETS[preset]}
    if config_file is not None:
        data = read_config_file(Path(config_file))
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConstructError(f"{config_file}: unknown settings {', '.join(unknown)}")
        _apply_layer(values, data, str(config_file))
    _apply_layer(values, {k: v for k, v in flags.items() if v is not None}, "flags")
    for k, v in values.items():
        if isinstance(v, list):
            values[k] = tuple(v)
    cfg = TrainConfig(**values)
    if cfg.batch_size < 2:
        raise ConstructError("batch size must be >= 2 (batch norm needs two samples)")
    if (cfg.steps is not None and cfg.steps < 1) or (cfg.epochs is not None and cfg.epochs <= 0):
        raise ConstructError("--steps must be >= 1 and --epochs > 0")
    if not (0 <= cfg.warmup < 1 and 0 <= cfg.aux_ramp <= 1):
        raise ConstructError("--warmup must be in [0, 1) and --aux-ramp in [0, 1] (fractions of the steps)")
    if cfg.loss_weighting not in LOSS_WEIGHTINGS:
        raise ConstructError(f"--loss-weighting {cfg.loss_weighting}: expected one of {', '.join(LOSS_WEIGHTINGS)}")
    if (cfg.eval_every is not None and cfg.eval_every < 1) or cfg.log_every < 1:
        raise ConstructError("eval_every and log_every must be >= 1")
    check_precision(cfg.precision)
    if cfg.optimizer not in OPTIMIZERS:
        raise ConstructError(f"optimizer {cfg.optimizer!r}: expected one of {', '.join(OPTIMIZERS)}")
    if cfg.bank_init not in BANK_INITS:
        raise ConstructError(f"bank_init {cfg.bank_init!r}: expected one of {', '.join(BANK_INITS)}")
    if cfg.fg_threshold_scope not in THRESHOLD_SCOPES:
        raise ConstructError(
            f"fg_threshold_scope {cfg.fg_threshold_scope!r}: expected one of {', '.join(THRESHOLD_SCOPES)}")
    if cfg.loss_weighting_lr <= 0:
        raise ConstructError(f"loss_weighting_lr {cfg.loss_weighting_lr:g}: must be > 0")
    if cfg.checkpoint_every < 1 or cfg.bank_size < 1 or (cfg.workers is not None and cfg.workers < 0):
        raise ConstructError("checkpoint_every and bank_size must be >= 1 and workers >= 0")
    return cfg


def resumed_config(saved: dict) -> TrainConfig:
    """The settings of a run being resumed, from the `train` table of its run config. Settings added since
    it started take the dataclass defaults, which keep the behaviour from before they existed (a preset's
    value for them could change the run half-way)."""
    values = {**TrainConfig().to_dict(), **saved}
    return resolve_config(values["preset"], None, **{k: v for k, v in values.items() if k != "preset"})
