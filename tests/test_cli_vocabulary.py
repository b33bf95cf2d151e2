"""One vocabulary across commands: every spelling of a flag reaches the same setting, old ones included.

Each command is stopped where it hands its settings to the library (the settings are captured there), so
these tests parse flags only and run no phase.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import construct.demo
import construct.distill.config
import construct.extract.config
import construct.inference.factory
import construct.refine
import construct.train.config
from construct.cli import main
from construct.demo import DEMO_DEVICE, DemoConfig, _phases  # before the fixture stands in for DemoConfig


class Captured(Exception):
    """Raised by a stand-in for the library: the command got as far as handing over its settings."""

    def __init__(self, kwargs: dict):
        super().__init__("captured")
        self.kwargs = kwargs


def _capture(*args, **kwargs):
    raise Captured(kwargs)


@pytest.fixture
def settings(monkeypatch):
    """settings(args) → the keyword arguments the command handed to the library."""
    for module, name in ((construct.distill.config, "DistillConfig"), (construct.refine, "RefineConfig"),
                         (construct.extract.config, "ExtractConfig"), (construct.train.config, "resolve_config"),
                         (construct.inference.factory, "load_predictor"), (construct.demo, "DemoConfig")):
        monkeypatch.setattr(module, name, _capture)

    def run(args: list[str]) -> dict:
        result = CliRunner().invoke(main, [str(a) for a in args])
        assert isinstance(result.exception, Captured), result.output
        return result.exception.kwargs

    return run


def _same(settings, commands: list[list[str]], **expected) -> None:
    got = [settings(args) for args in commands]
    for key, value in expected.items():
        assert [g[key] for g in got] == [value] * len(got), key


def test_distill_spellings(settings):
    base = ["distill", "--data", "d", "--out", "o"]
    _same(settings, [base + ["--run", "r"], base + ["--model", "r"], base + ["--teacher", "r"]], run=Path("r"))
    _same(settings, [base + ["--run", "r", "--workers", "3"], base + ["--run", "r", "--crf-workers", "3"]],
          target_workers=3, workers=0)
    _same(settings, [base + ["--run", "r", "--loader-workers", "2"]], workers=2, target_workers=2)
    _same(settings, [base + ["--run", "r", "--no-tta", "--no-crf"]], tta=False, crf=False)
    _same(settings, [base + ["--run", "r"], base + ["--run", "r", "--tta", "--crf"]], tta=True, crf=True)
    _same(settings, [base + ["--run", "r", "--weighting", "fixed"], base + ["--run", "r", "--loss-weighting", "fixed"]],
          weighting="fixed")
    _same(settings, [base + ["--run", "r", "--epochs", "0.5"]], epochs=0.5)


def test_refine_spellings(settings):
    base = ["refine", "--data", "d"]
    _same(settings, [base + ["--run", "r", "--workers", "3"], base + ["--model", "r", "--crf-workers", "3"]],
          run=Path("r"), workers=3, loader_workers=1)
    _same(settings, [base + ["--run", "r", "--loader-workers", "0"]], loader_workers=0, workers=2)


def test_extract_train_and_demo_spellings(settings):
    extract = ["extract", "--data", "d"]
    _same(settings, [extract + ["--workers", "3"], extract + ["--loader-workers", "3"]], workers=3)
    train = ["train", "--features", "f", "--out", "o"]
    _same(settings, [train + ["--workers", "3"], train + ["--loader-workers", "3"]], workers=3)
    _same(settings, [train + ["--weighting", "uncertainty"], train + ["--loss-weighting", "uncertainty"]],
          loss_weighting="uncertainty")
    _same(settings, [["demo", "--workers", "3"], ["demo", "--crf-workers", "3"]], crf_workers=3)


def test_slide_spellings(settings, tmp_path):
    slide = tmp_path / "a.svs"
    slide.touch()
    base = ["slide", slide, "--out", tmp_path / "out", "--device", "cpu"]
    _same(settings, [base + ["--run", "r"], base + ["--model", "r"], base + ["--model", "r", "--no-tta"]],
          tta=False)
    _same(settings, [base + ["--run", "r", "--tta"]], tta=True)


def _options(command: click.Command) -> dict[str, click.Option]:
    return {p.name: p for p in command.params if isinstance(p, click.Option)}


@pytest.mark.parametrize("name", sorted(main.commands))
def test_shared_names(name):
    """--run has its torchrun spelling --model; every process count says which processes it counts;
    TTA and CRF switches can be turned both ways."""
    options = _options(main.commands[name])
    if "run" in options:
        assert "--model" in options["run"].opts
    for option in options.values():
        if "workers" in option.name or any("workers" in o for o in option.opts):
            assert {"--crf-workers", "--loader-workers"} & set(option.opts), option.opts
        if option.name in ("tta", "crf"):
            assert option.secondary_opts == [f"--no-{option.name}"], option.opts


def test_epochs_have_one_type():
    types = {name: _options(main.commands[name])["epochs"].type for name in ("train", "distill", "ablate")}
    assert set(types.values()) == {click.FLOAT}


def test_the_demos_printed_commands_carry_its_settings(settings, tmp_path):
    """Each phase's "equivalent command" reaches the settings the demo itself passes (seed, device, CRF
    processes), so that a user who reruns it by hand gets the same phase."""
    cfg = DemoConfig(out=tmp_path, seed=7, crf_workers=3)
    seen = set()
    for name, command, _ in _phases(cfg):
        if name == "synth":  # seed checked by name below; running it would write the data
            assert f"--seed {cfg.seed}" in command
            continue
        args = shlex.split(command)
        assert args[0] == "construct"
        got = settings(args[1:])
        assert got["device"] == DEMO_DEVICE, name
        if args[1] in ("train", "distill"):
            assert got["seed"] == cfg.seed, name
        if args[1] in ("refine", "distill"):
            assert got["target_workers" if args[1] == "distill" else "workers"] == cfg.crf_workers, name
        seen.add(args[1])
    assert seen == {"extract", "train", "refine", "distill"}
