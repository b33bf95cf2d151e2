"""One thin factory over the backbone families; each family knows how to resolve its SPEC."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from construct.backbones.conch import build_conch
from construct.backbones.segformer import build_segformer
from construct.errors import ConstructError

DEFAULT_SPECS = {"conch": "hf:MahmoodLab/conch", "segformer": "hf:nvidia/mit-b1"}
_BUILDERS: dict[str, Callable[..., nn.Module]] = {"conch": build_conch, "segformer": build_segformer}


def create_backbone(family: str, spec: str | None = None, image_size: int = 224) -> nn.Module:
    """Build a frozen backbone from a SPEC: `hf:REPO`, a local path, `random` or `random-tiny`."""
    if family not in _BUILDERS:
        raise ConstructError(f"unknown backbone family {family!r} (known: {', '.join(_BUILDERS)})")
    return _BUILDERS[family](spec or DEFAULT_SPECS[family], image_size=image_size)
