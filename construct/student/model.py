"""The student: a segmentation-models-pytorch network over [0, 1] images, logits for classes + background.

Its weights live in a student run as safetensors; config.json "student" says how to rebuild it.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import nn

from construct.errors import ConstructError
from construct.student.names import ARCHS, ENCODERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HUB_TIMEOUT_S = 10.0  # an offline machine fails fast instead of hanging on the download


def check_names(arch: str, encoder: str) -> None:
    if arch not in ARCHS:
        raise ConstructError(f"--arch {arch}: unknown; expected one of {', '.join(ARCHS)}")
    if encoder not in ENCODERS:
        raise ConstructError(f"--encoder {encoder}: unknown; expected one of {', '.join(ENCODERS)}")


class Student(nn.Module):
    """ImageNet normalisation + an smp network: images01 (B, 3, H, W) → logits (B, C + 1, H, W)."""

    def __init__(self, arch: str, encoder: str, n_channels: int):
        super().__init__()
        import segmentation_models_pytorch as smp

        check_names(arch, encoder)
        cls = {"unet": smp.Unet, "fpn": smp.FPN, "segformer": smp.Segformer}[arch]
        self.net = cls(encoder_name=ENCODERS[encoder], encoder_weights=None, classes=n_channels)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        return self.net((images01 - self.mean) / self.std)


def _imagenet_state(encoder: str) -> dict[str, torch.Tensor]:
    """The encoder's ImageNet weights from smp's hub, or a one-line error when the hub cannot be reached."""
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:  # the hub client retries for half a minute before failing; a closed network is known at once
        socket.create_connection((host, 443), timeout=HUB_TIMEOUT_S).close()
    except OSError as e:
        raise ConstructError(f"--encoder-weights imagenet: cannot reach {host} to download the {encoder} "
                             f"weights ({e.__class__.__name__}); offline, pass a local file or none") from e
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HUB_TIMEOUT_S)
    try:
        enc = smp.encoders.get_encoder(ENCODERS[encoder], weights="imagenet")
    except Exception as e:  # noqa: BLE001 -- hub clients raise many types (requests, urllib, huggingface_hub)
        raise ConstructError(f"--encoder-weights imagenet: could not download the {encoder} weights "
                             f"({type(e).__name__}); offline, pass a local file or none") from e
    finally:
        socket.setdefaulttimeout(old)
    return enc.state_dict()


def _file_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConstructError(f"{path}: encoder weights file not found (--encoder-weights takes none, "
                             f"imagenet or a file)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- safetensors, pickle and zip errors alike mean an unreadable file
        raise ConstructError(f"{path}: unreadable encoder weights ({type(e).__name__}: {e})") from e
    return state.get("state_dict", state) if isinstance(state, dict) else state


def build_student(arch: str, encoder: str, n_channels: int, encoder_weights: str = "none") -> Student:
    """A fresh student; the encoder starts from `encoder_weights` (none, imagenet or a local file)."""
    student = Student(arch, encoder, n_channels)
    if encoder_weights == "none":
        return student
    state = _imagenet_state(encoder) if encoder_weights == "imagenet" else _file_state(Path(encoder_weights))
    try:
        student.net.encoder.load_state_dict(state)
    except RuntimeError as e:
        raise ConstructError(f"{encoder_weights}: these weights do not fit the {encoder} encoder "
                             f"({str(e).splitlines()[0]})") from e
    return student
