"""Resolving a backbone SPEC to weights: hub download, safe local loading, fingerprints."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from construct.errors import ConstructError

RANDOM_SPECS = ("random", "random-tiny")
HUB_PREFIX = "hf:"


def is_random(spec: str) -> bool:
    return spec in RANDOM_SPECS


def hub_download(repo_id: str, filename: str, flag: str) -> Path:
    """Download one file from the Hugging Face hub (token from HF_TOKEN as usual), or fail in one line."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id, filename, token=os.environ.get("HF_TOKEN")))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConstructError(
            f"hf:{repo_id}: could not fetch {filename} from the Hugging Face hub ({reason}); "
            f"download it where you have access (gated models need `huggingface-cli login` or HF_TOKEN) "
            f"and pass the local file with {flag} /path/to/{filename}"
        ) from e


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint without executing pickled code (safetensors, or torch.load weights_only)."""
    if not path.is_file():
        raise ConstructError(f"{path}: checkpoint file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch/safetensors raise many types for corrupt or unsafe files
        raise ConstructError(f"{path}: not a readable weights file ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ConstructError(f"{path}: does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in sd.items()}


def fingerprint(named_tensors: Iterator[tuple[str, torch.Tensor]]) -> str:
    """sha256 over names, shapes and bytes: identifies the weights actually in use."""
    h = hashlib.sha256()
    for name, t in sorted(named_tensors, key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def module_fingerprint(module: torch.nn.Module) -> str:
    """`fingerprint` of a module's whole state dict (parameters and buffers): how runs, score stores and
    outputs name the weights that made them."""
    return fingerprint(iter(module.state_dict().items()))


def check_keys(
    missing: list[str], unexpected: list[str], source: str, ignorable: Callable[[str], bool]
) -> None:
    """Refuse a checkpoint that does not fit the architecture, naming a few offending keys."""
    unexpected = [k for k in unexpected if not ignorable(k)]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        raise ConstructError(f"{source}: checkpoint does not match the architecture: {'; '.join(parts)}")
