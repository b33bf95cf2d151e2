"""Frozen SegFormer MiT-B1 (transformers): the structural teacher's four stages."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.weights import (
    HUB_PREFIX,
    check_keys,
    is_random,
    load_state_dict_file,
    module_fingerprint,
)
from construct.errors import ConstructError
from construct.seeding import seeded_init

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
N_STAGES = 4
MIT_B1 = {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "num_attention_heads": [1, 2, 5, 8]}
MIT_TINY = {"hidden_sizes": [16, 32, 40, 64], "depths": [1, 1, 1, 1], "num_attention_heads": [1, 2, 5, 8]}
COMMON = {"sr_ratios": [8, 4, 2, 1], "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2], "mlp_ratios": [4, 4, 4, 4]}

# NVlabs `mit_b*.pth` names → transformers 5 `SegformerModel` names (per block / per stage).
_NVLABS_BLOCK = {
    "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
    "attn.proj": "attention.o_proj", "attn.sr": "attention.sequence_reduction.sequence_reduction",
    "attn.norm": "attention.sequence_reduction.layer_norm", "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}
_NVLABS_IGNORED = ("head.",)  # the ImageNet classifier


def tap_name(stage: int) -> str:
    return f"seg_s{stage}"


def _config(arch: dict):
    from transformers import SegformerConfig

    return SegformerConfig(**arch, **COMMON)


def convert_nvlabs_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the original MiT key names (as in `mit_b1.pth`) onto transformers' SegformerModel."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.startswith(_NVLABS_IGNORED):
            continue
        if m := re.fullmatch(r"patch_embed(\d)\.(proj|norm)\.(weight|bias)", key):
            part = "proj" if m[2] == "proj" else "layer_norm"
            out[f"stages.{int(m[1]) - 1}.patch_embeddings.{part}.{m[3]}"] = value
        elif m := re.fullmatch(r"norm(\d)\.(weight|bias)", key):
            out[f"stages.{int(m[1]) - 1}.layer_norm.{m[2]}"] = value
        elif m := re.fullmatch(r"block(\d)\.(\d+)\.(.+)\.(weight|bias)", key):
            prefix = f"stages.{int(m[1]) - 1}.blocks.{m[2]}.attention"
            if m[3] == "attn.kv":  # fused key/value projection, key first
                k, v = value.chunk(2, dim=0)
                out[f"{prefix}.k_proj.{m[4]}"], out[f"{prefix}.v_proj.{m[4]}"] = k, v
            elif m[3] in _NVLABS_BLOCK:
                out[f"stages.{int(m[1]) - 1}.blocks.{m[2]}.{_NVLABS_BLOCK[m[3]]}.{m[4]}"] = value
            else:
                out[key] = value  # left for check_keys to report
        else:
            out[key] = value
    return out


def _arch_for(hidden_sizes: list[int]) -> str:
    if hidden_sizes == MIT_B1["hidden_sizes"]:
        return "mit-b1"
    if hidden_sizes == MIT_TINY["hidden_sizes"]:
        return "mit-b1-tiny"
    return "mit-" + "-".join(map(str, hidden_sizes))


def _load_model(spec: str) -> tuple[nn.Module, bool]:
    from transformers import SegformerModel

    if is_random(spec):
        with seeded_init():
            return SegformerModel(_config(MIT_TINY if spec == "random-tiny" else MIT_B1)), True
    if spec.startswith(HUB_PREFIX) or Path(spec).is_dir():
        source = spec[len(HUB_PREFIX):] if spec.startswith(HUB_PREFIX) else spec
        try:
            with seeded_init():  # leaves the caller's RNG untouched (weights come from the folder)
                return SegformerModel.from_pretrained(source), False
        except (OSError, ValueError) as e:
            where = "the Hugging Face hub" if spec.startswith(HUB_PREFIX) else "this folder"
            raise ConstructError(
                f"{spec}: could not load a SegFormer from {where} ({str(e).splitlines()[0]}); pass a local "
                f"transformers folder or the NVlabs mit_b1.pth file with --segformer PATH"
            ) from e
    sd = load_state_dict_file(Path(spec))
    if any(k.startswith(("block1.", "patch_embed1.")) for k in sd):
        sd = convert_nvlabs_state_dict(sd)
    hidden = [sd[f"stages.{i}.layer_norm.weight"].shape[0] for i in range(N_STAGES) if f"stages.{i}.layer_norm.weight" in sd]
    if len(hidden) != N_STAGES:
        raise ConstructError(f"{spec}: not a MiT/SegFormer encoder checkpoint (stage norms not found)")
    depths = [len({k.split(".")[3] for k in sd if k.startswith(f"stages.{i}.blocks.")}) for i in range(N_STAGES)]
    heads = MIT_B1["num_attention_heads"]
    with seeded_init():  # every weight is overwritten below; this only keeps the caller's RNG untouched
        model = SegformerModel(_config({"hidden_sizes": hidden, "depths": depths, "num_attention_heads": heads}))
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # tensors of the wrong shape
        lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln] or str(e).splitlines()[:1]
        raise ConstructError(f"{spec}: checkpoint does not match the MiT architecture ({lines[0].rstrip('.')})") from e
    check_keys(list(missing), list(unexpected), spec, lambda k: False)
    return model, False


class SegformerBackbone(nn.Module):
    """Frozen MiT encoder; always in eval mode (the reference code left DropPath active)."""

    def __init__(self, model: nn.Module, recipe: BackboneRecipe):
        super().__init__()
        self.model = model
        self.recipe = recipe
        self.register_buffer("mean", torch.tensor(recipe.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(recipe.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> SegformerBackbone:
        return super().train(False)

    @property
    def stage_channels(self) -> list[int]:
        return list(self.model.config.hidden_sizes)

    def taps(self, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        """images01: (B, 3, H, W) RGB in [0, 1] → {seg_s1..seg_s4: (B, C_s, H/4/2^(s-1), ...)}."""
        x = (images01 - self.mean) / self.std
        hidden = self.model(pixel_values=x, output_hidden_states=True).hidden_states
        return {tap_name(i + 1): h for i, h in enumerate(hidden[:N_STAGES])}


def build_segformer(spec: str, image_size: int = 224) -> SegformerBackbone:
    model, random_weights = _load_model(spec)
    recipe = BackboneRecipe(
        family="segformer", spec=spec, arch=_arch_for(list(model.config.hidden_sizes)),
        image_size=image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
        taps=tuple(tap_name(i + 1) for i in range(N_STAGES)),
        fingerprint=module_fingerprint(model), random_weights=random_weights,
    )
    return SegformerBackbone(model, recipe)
