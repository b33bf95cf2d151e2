"""Device and precision choices shared by every phase that runs a model."""

from __future__ import annotations

import contextlib
import sys

import torch

from construct.errors import ConstructError

PRECISIONS = ("fp32", "bf16")  # what a model actually runs at, as recorded in stores and runs
PRECISION_CHOICES = ("auto", *PRECISIONS)  # what a user may ask for
# torch's own reports of the CPU features that compute bf16 natively; on CPUs without them, bf16 autocast
# is emulated and slower than fp32. Looked up by name: private, and absent from some torch builds.
CPU_BF16_CHECKS = {"_is_amx_tile_supported": "AMX", "_is_avx512_bf16_supported": "AVX512-BF16"}
_announced: set[str] = set()


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ConstructError(f"--device {device}: not a valid device ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConstructError(f"--device {device}: CUDA is not available on this machine")
    return dev


def native_bf16(device: torch.device) -> str | None:
    """What computes bf16 natively on `device` (e.g. "AMX"), or None where bf16 would be emulated."""
    if device.type == "cuda":
        return "a bf16 GPU" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        found = [label for name, label in CPU_BF16_CHECKS.items() if getattr(torch.cpu, name, lambda: False)()]
        return found[0] if found else None
    return None


def check_precision(requested: str | None) -> None:
    """A one-line refusal of a precision that is not auto (or None), fp32 or bf16."""
    if requested is not None and requested not in PRECISION_CHOICES:
        raise ConstructError(f"--precision {requested}: expected one of {', '.join(PRECISION_CHOICES)}")


def resolve_precision(requested: str | None, device: torch.device, recorded: str | None = None) -> str:
    """fp32 or bf16 for `requested` (auto, fp32, bf16; None means auto) on `device`.

    auto takes `recorded` (what a run was explicitly asked to run at) when there is one, else bf16 where the
    device computes it natively and fp32 elsewhere. The choice is printed once per process."""
    check_precision(requested)
    requested = requested or "auto"
    if requested != "auto":
        return requested
    if recorded in PRECISIONS:
        _announce(f"precision: {recorded} (auto: as first asked for this run or store)")
        return recorded
    native = native_bf16(device)
    choice = "bf16" if native else "fp32"
    why = f"{device.type} has {native}" if native else f"no native bf16 on {device.type}"
    _announce(f"precision: {choice} (auto: {why})")
    return choice


def _announce(line: str) -> None:
    from construct.distributed import is_main_process

    if line not in _announced and is_main_process():
        _announced.add(line)
        print(line, file=sys.stderr)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast around forwards (2-4x faster where bf16 is native); fp32 runs as is. Parameters,
    optimizer state and whatever is computed outside the context stay fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision != "fp32":
        raise ConstructError(f"--precision {precision}: expected fp32 or bf16")
    return contextlib.nullcontext()
