"""The tiny trained runs that the refine, distill and slide suites share (built once per session by the
fixtures in tests/conftest.py): a head run and a student distilled from it."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from construct.backbones import create_backbone
from construct.data.synth import SynthConfig, make_synthetic_dataset
from construct.distill.config import DistillConfig
from construct.extract.config import ExtractConfig
from construct.extract.extractor import extract
from construct.refine import RefineConfig, refine
from construct.train.config import resolve_config
from construct.train.trainer import train

# A small, fast student for tests: FPN over MobileNet-V3 small, 2 epochs.
QUICK_STUDENT = dict(arch="fpn", encoder="mobilenet-v3-small", epochs=2, batch_size=4, lr=3e-3, target_workers=0,
                     tta=False)


@dataclass
class TinyRun:
    data: Path
    run: Path
    conch: object  # the random-tiny CONCH the run's store was extracted with

    def config(self, out: Path, **kw) -> RefineConfig:
        """Quick settings: test split, everything in the main process; override with kw."""
        base = dict(run=self.run, data=self.data, split="test", out=out, workers=0, loader_workers=0)
        base.update(kw)
        if base.get("images") is not None:
            base["data"], base["split"] = None, None
        return RefineConfig(**base)

    def refine(self, out: Path, **kw):
        return refine(self.config(out, **kw), conch=self.conch, progress=False)

    def copy_run(self, dest: Path) -> Path:
        """A copy of the run folder (config + head weights) that a test may edit."""
        dest.mkdir(parents=True)
        for p in self.run.iterdir():
            if p.suffix in (".json", ".safetensors"):
                shutil.copy(p, dest / p.name)
        return dest


def make_tiny_run(root: Path) -> TinyRun:
    """Synthetic tiles → random-tiny features → 1 epoch of the demo preset."""
    data = make_synthetic_dataset(root / "data", SynthConfig(n_train=12, n_valid=4, n_test=4), progress=False)
    conch = create_backbone("conch", "random-tiny", 224)
    segformer = create_backbone("segformer", "random-tiny", 224)
    store = root / "train.zarr"
    extract(ExtractConfig(data=data, split="train", out=store, conch="random-tiny", segformer="random-tiny",
                          workers=0, batch_size=12), conch=conch, segformer=segformer, progress=False)
    train(resolve_config("demo", None, features=str(store), out=str(root / "run"), epochs=1, workers=0),
          progress=False)
    return TinyRun(data=data, run=root / "run", conch=conch)


def quick_config(teacher: TinyRun, out: Path, **kw) -> DistillConfig:
    return DistillConfig(run=teacher.run, data=teacher.data, out=out, **{**QUICK_STUDENT, **kw})
