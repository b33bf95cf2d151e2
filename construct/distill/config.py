"""Distill settings: what the student is, how it learns, and how the teacher targets are made."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from construct.stain.methods import DEFAULT_AUGMENT as DEFAULT_STAIN_AUGMENT
from construct.stain.methods import DEFAULT_LAB_AUGMENT
from construct.stain.methods import DEFAULT_METHOD as DEFAULT_STAIN_NORM
from construct.store.in_memory import DEFAULT_MEMORY_GB

WEIGHTINGS = ("uncertainty", "fixed")
# Where a student run's inputs are and where and how it computes: `distill --resume` takes these from the
# command; everything else (what the student is and learns) from the run.
RESUME_FROM_COMMAND = ("run", "data", "out", "targets", "conch", "device", "precision", "memory_gb", "workers",
                       "target_workers")
# More (or fewer) passes may be asked of a resumed run, e.g. to extend a finished one; unless given, its own.
EXTENDABLE = ("epochs",)
# Settings added after runs could have started, with the value that keeps such a run's behaviour.
ADDED_SETTINGS = {"lab_augment": 0.0}


@dataclass
class DistillConfig:
    run: Path  # the stage-1 (head) run: the teacher
    data: Path  # dataset root: train split (targets, training) and valid split (model selection)
    out: Path  # the student run folder
    targets: Path | None = None  # a score store made elsewhere; default RUN/targets/<data fingerprint>.zarr
    classes: str = "bcss"  # the dataset's class set, checked against the run's
    arch: str = "unet"
    encoder: str = "resnet18"
    encoder_weights: str = "none"  # none, imagenet (hub download) or a local file
    epochs: float = 20  # passes over the train split; a fraction stops part-way through the last one
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    weighting: str = "uncertainty"  # learnable (Kendall et al. 2018) or fixed weights w_mse / w_ce
    w_mse: float = 1.0
    w_ce: float = 1.0
    crop: int | None = None  # train on random crops of this many px (a multiple of 32); None: whole tiles
    boundary_radius: int = 3  # px around pseudo-mask boundaries whose cross-entropy is weighted up
    boundary_boost: float = 2.0  # weight there is 1 + boost
    seed: int = 0
    workers: int = 0  # image decoding processes for training
    memory_gb: float = DEFAULT_MEMORY_GB  # targets that fit are read into RAM once, larger ones stream
    device: str = "auto"
    # Teacher targets: refine's own path over the train split.
    tta: bool = True
    crf: bool = True
    target_batch_size: int = 8
    target_workers: int = 2  # CRF processes
    conch: str | None = None
    # The teacher's forward (auto: the teacher run's own if it was given one, else native bf16 or fp32) and the
    # student's, in training and validation (auto: native bf16 or fp32); losses and optimizer state stay fp32.
    precision: str | None = "auto"
    stain_norm: str = DEFAULT_STAIN_NORM  # train tiles normalised to the teacher's reference before it labels them
    stain_augment: float = DEFAULT_STAIN_AUGMENT  # HED perturbation strength of the student's tiles (0: off)
    lab_augment: float = DEFAULT_LAB_AUGMENT  # random Reinhard-style colour transfer strength (0: off)

    def to_dict(self) -> dict:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def student_dict(self) -> dict:
        return {"arch": self.arch, "encoder": self.encoder, "encoder_weights": self.encoder_weights}


def resumed_distill_config(saved: dict, command: dict) -> DistillConfig:
    """The settings of a student run being resumed: the `distill` table of its run config, with what
    `command` sets (at least the RESUME_FROM_COMMAND fields; an EXTENDABLE one where it was given)."""
    fields = DistillConfig.__dataclass_fields__
    kept = {k: v for k, v in {**ADDED_SETTINGS, **saved}.items() if k in fields and k not in command}
    return DistillConfig(**kept, **command)


def saved_setting(saved: dict, name: str):
    """A setting as a run recorded it (ADDED_SETTINGS' value when it started before the setting existed)."""
    return saved.get(name, ADDED_SETTINGS.get(name))
