"""The precision resolver: auto is bf16 exactly where the device computes it natively (the capability is
mocked both ways: no test machine has to own the hardware), explicit choices pass, the choice is printed once."""

from __future__ import annotations

import pytest
import torch

import construct.runtime as runtime
from construct.errors import ConstructError
from construct.runs import requested_precision
from construct.runtime import resolve_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(runtime, "_announced", set())


def _report(value: bool):
    return lambda: value


def cpu_reports(monkeypatch, **features: bool) -> None:
    """torch.cpu's capability reports, as a CPU with (True) or without (False) each feature gives them."""
    for name in runtime.CPU_BF16_CHECKS:
        short = name.removeprefix("_is_").removesuffix("_supported")
        monkeypatch.setattr(torch.cpu, name, _report(features.get(short, False)), raising=False)


@pytest.mark.parametrize("features", [{"amx_tile": True}, {"avx512_bf16": True}])
def test_auto_is_bf16_on_a_cpu_that_computes_it(monkeypatch, features):
    cpu_reports(monkeypatch, **features)
    assert resolve_precision("auto", CPU) == "bf16"


def test_auto_is_fp32_on_a_cpu_without_it(monkeypatch):
    cpu_reports(monkeypatch)
    assert resolve_precision("auto", CPU) == "fp32"
    assert resolve_precision(None, CPU) == "fp32"  # None is auto (a config left unset)


def test_a_torch_without_the_reports_counts_as_no_bf16(monkeypatch):
    for name in runtime.CPU_BF16_CHECKS:
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert resolve_precision("auto", CPU) == "fp32"


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_a_gpu_follows_its_native_bf16(monkeypatch, native, expected):
    asked = []

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        asked.append(including_emulation)
        return native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert resolve_precision("auto", CUDA) == expected
    assert asked == [False]  # an emulating GPU is as slow as an emulating CPU


@pytest.mark.parametrize("native", [True, False])
def test_explicit_choices_and_a_run_s_request_win_over_the_hardware(monkeypatch, native):
    cpu_reports(monkeypatch, amx_tile=native)
    assert resolve_precision("fp32", CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU, recorded="bf16") == "fp32"
    assert resolve_precision("auto", CPU, recorded="fp32") == "fp32"
    assert resolve_precision("auto", CPU, recorded="bf16") == "bf16"


def test_an_unknown_precision_is_refused_in_one_line():
    with pytest.raises(ConstructError, match="--precision fp16: expected one of auto, fp32, bf16"):
        resolve_precision("fp16", CPU)


def test_the_choice_is_printed_once(monkeypatch, capsys):
    cpu_reports(monkeypatch, amx_tile=True)
    for _ in range(3):
        resolve_precision("auto", CPU)
    err = capsys.readouterr().err
    assert err == "precision: bf16 (auto: cpu has AMX)\n"


def test_what_a_run_asked_for():
    assert requested_precision({"train": {"precision": "bf16"}}) == "bf16"
    auto_on_a_bf16_store = {"train": {"precision": "auto"}, "store": {"preprocessing": {"precision": "bf16"}}}
    assert requested_precision(auto_on_a_bf16_store) is None
    # Head runs from before `train --precision`: extract's bf16 was an opt-in, its fp32 the default.
    assert requested_precision({"train": {}, "store": {"preprocessing": {"precision": "bf16"}}}) == "bf16"
    assert requested_precision({"train": {}, "store": {"preprocessing": {"precision": "fp32"}}}) is None
    assert requested_precision({"kind": "student", "distill": {"precision": "fp32"}}) == "fp32"
    assert requested_precision({"kind": "student", "distill": {"precision": None}}) is None
