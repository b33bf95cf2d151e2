"""Frozen CONCH ViT-B/16 (official `conch-fork` code): block taps, contrastive head, text embeddings."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from construct.backbones.recipe import BackboneRecipe
from construct.backbones.weights import (
    HUB_PREFIX,
    check_keys,
    fingerprint,
    hub_download,
    is_random,
    load_state_dict_file,
)
from construct.errors import ConstructError
from construct.head.pooler import ContrastiveHead
from construct.seeding import seeded_init

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TAP_BLOCKS = (3, 6, 9, 12)  # 1-based block outputs, residual stream before the final norm
PATCH_SIZE = 16
NATIVE_IMAGE_SIZE = 448  # CONCH was trained (and its checkpoint saved) at 448 px
TEXT_CONTEXT = 128  # 127 tokens + one pad placeholder that the text tower replaces by its CLS
CHECKPOINT_FILE = "pytorch_model.bin"
# Parts of the released checkpoint we never run: the caption decoder and the caption pooler.
UNUSED_PREFIXES = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")
# A CONCH of the same code with tiny widths, for tests and the demo (taps stay at blocks 3/6/9/12).
TINY_OVERRIDES = {
    "embed_dim": 64,
    "vision_cfg": {"width": 64, "layers": 12, "num_heads": 4},
    "text_cfg": {"width": 64, "heads": 4, "layers": 2},
}


def tap_name(block: int) -> str:
    return f"conch_b{block}"


def _conch_module(name: str):
    """Import a `conch.open_clip_custom` module, silencing the deprecation warning its timm import raises."""
    import importlib
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module="timm")
        return importlib.import_module(f"conch.open_clip_custom.{name}")


def conch_config(tiny: bool, image_size: int) -> dict:
    """The package's model config, without the never-released text decoder, at `image_size`."""
    CFG_DIR = _conch_module("factory").CFG_DIR

    cfg = json.loads((CFG_DIR / "conch_ViT-B-16.json").read_text())
    cfg.pop("custom_text", None)
    cfg["multimodal_cfg"]["layers"] = 0
    cfg["vision_cfg"]["attentional_pool_caption"] = False
    if tiny:
        cfg["embed_dim"] = TINY_OVERRIDES["embed_dim"]
        cfg["vision_cfg"].update(TINY_OVERRIDES["vision_cfg"])
        cfg["text_cfg"].update(TINY_OVERRIDES["text_cfg"])
    cfg["vision_cfg"]["image_size"] = image_size
    return cfg


def build_coca(tiny: bool, image_size: int) -> nn.Module:
    return _conch_module("coca_model").CoCa(**conch_config(tiny, image_size))


def contrastive_head(model: nn.Module) -> ContrastiveHead:
    """A copy of CoCa's frozen image head (final trunk norm, contrastive pooler, ln, projection)."""
    v = model.visual
    state = {"proj": v.proj_contrast.detach(), "n_head": torch.tensor(float(v.attn_pool_contrast.attn.num_heads))}
    for prefix, module in (("norm", v.trunk.norm), ("pooler", v.attn_pool_contrast), ("ln_contrast", v.ln_contrast)):
        state.update({f"{prefix}.{k}": t.detach() for k, t in module.state_dict().items()})
    return ContrastiveHead.from_state_dict(state)


# Shapes that identify each architecture this code can build (attention heads leave no trace in the
# weights, so a checkpoint is matched against the known sizes rather than sized freely).
FULL_DIMS = {"vision_width": 768, "vision_layers": 12, "text_width": 768, "text_layers": 12, "embed_dim": 512}
TINY_DIMS = {
    "vision_width": TINY_OVERRIDES["vision_cfg"]["width"], "vision_layers": TINY_OVERRIDES["vision_cfg"]["layers"],
    "text_width": TINY_OVERRIDES["text_cfg"]["width"], "text_layers": TINY_OVERRIDES["text_cfg"]["layers"],
    "embed_dim": TINY_OVERRIDES["embed_dim"],
}


def _count_blocks(state: dict[str, torch.Tensor], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


# The tensors whose shapes give a checkpoint's widths; a file without them is not a CONCH checkpoint.
_ARCH_KEYS = ("visual.trunk.cls_token", "text.token_embedding.weight", "visual.proj_contrast")


def checkpoint_dims(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Widths and depths of a CONCH state dict that holds `_ARCH_KEYS`."""
    return {
        "vision_width": state["visual.trunk.cls_token"].shape[-1],
        "vision_layers": _count_blocks(state, "visual.trunk.blocks."),
        "text_width": state["text.token_embedding.weight"].shape[-1],
        "text_layers": _count_blocks(state, "text.transformer.resblocks."),
        "embed_dim": state["visual.proj_contrast"].shape[0],
    }


def is_tiny_checkpoint(state: dict[str, torch.Tensor], spec: str) -> bool:
    """Whether a local checkpoint holds the tiny test architecture (e.g. one saved from `random-tiny`)
    rather than CONCH ViT-B/16; a checkpoint of any other size or layout is refused in one line."""
    absent = [k for k in _ARCH_KEYS if k not in state or state[k].ndim < 1]
    if absent:
        raise ConstructError(
            f"{spec}: not a CONCH checkpoint: {len(absent)} missing keys (e.g. {', '.join(absent)}); "
            f"it holds keys such as {', '.join(list(state)[:3]) or 'none'}"
        )
    dims = checkpoint_dims(state)
    if dims == FULL_DIMS:
        return False
    if dims == TINY_DIMS:
        return True
    found = ", ".join(f"{k} {v}" for k, v in dims.items())
    expected = ", ".join(f"{k} {v}" for k, v in FULL_DIMS.items())
    raise ConstructError(f"{spec}: not a CONCH ViT-B/16 checkpoint (found {found}; expected {expected})")


@dataclass(frozen=True)
class ConchWeights:
    state_dict: dict[str, torch.Tensor]
    random_weights: bool
    tiny: bool


def resolve_conch_weights(spec: str) -> ConchWeights:
    if is_random(spec):
        tiny = spec == "random-tiny"
        with seeded_init():
            native = build_coca(tiny, NATIVE_IMAGE_SIZE)
        return ConchWeights(native.state_dict(), random_weights=True, tiny=tiny)
    if spec.startswith(HUB_PREFIX):
        path = hub_download(spec[len(HUB_PREFIX):], CHECKPOINT_FILE, "--conch")
    else:
        path = Path(spec)
    state = load_state_dict_file(path)
    return ConchWeights(state, random_weights=False, tiny=is_tiny_checkpoint(state, spec))


def resample_pos_embed(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Resample the checkpoint's positional grid to the model's, once, as `force_image_size` does."""
    from timm.layers import resample_abs_pos_embed

    key = "visual.trunk.pos_embed"
    target = model.visual.trunk.pos_embed
    if key in state and state[key].shape != target.shape:
        state = dict(state)
        state[key] = resample_abs_pos_embed(
            state[key], new_size=list(model.visual.trunk.patch_embed.grid_size),
            num_prefix_tokens=1, interpolation="bilinear", antialias=False, verbose=False,
        )
    return state


class ConchBackbone(nn.Module):
    """Frozen CONCH: `taps(images01)` gives block outputs; `text_embeddings` encodes class prompts."""

    def __init__(self, model: nn.Module, recipe: BackboneRecipe):
        super().__init__()
        self.trunk = model.visual.trunk
        self.text = model.text
        self.contrastive_head = contrastive_head(model)
        self.recipe = recipe
        self.register_buffer("mean", torch.tensor(recipe.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(recipe.std).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> ConchBackbone:
        return super().train(False)  # frozen: never dropout/drop-path

    @property
    def width(self) -> int:
        return self.trunk.embed_dim

    @property
    def grid(self) -> int:
        return self.recipe.image_size // self.trunk.patch_embed.patch_size[0]

    def taps(self, images01: torch.Tensor, with_embedding: bool = True) -> dict[str, torch.Tensor]:
        """images01: (B, 3, H, W) RGB in [0, 1], resized (bicubic) to the recipe's image size when it
        differs (224 px tiles at 448 px). Returns patch tokens (B, N, D) per tapped block, `conch_cls`
        (B, D) of the last tapped block and, optionally, `conch_embedding` (B, E)."""
        size = self.recipe.image_size
        if tuple(images01.shape[-2:]) != (size, size):
            images01 = F.interpolate(images01, size=(size, size), mode="bicubic", align_corners=False,
                                     antialias=images01.shape[-1] > size).clamp(0, 1)
        x = (images01 - self.mean) / self.std
        outs = self.trunk.forward_intermediates(
            x, indices=[b - 1 for b in TAP_BLOCKS], return_prefix_tokens=True, norm=False,
            output_fmt="NLC", intermediates_only=True,
        )
        result = {tap_name(b): tokens for b, (tokens, _) in zip(TAP_BLOCKS, outs)}
        last_tokens, last_prefix = outs[-1]
        result["conch_cls"] = last_prefix[:, 0]
        if with_embedding:
            result["conch_embedding"] = self.contrastive_head(torch.cat([last_prefix, last_tokens], dim=1))
        return result

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings (len(texts), E), tokenised as CONCH was trained."""
        tok = _conch_module("custom_tokenizer").get_tokenizer()
        ids = tok(texts, max_length=TEXT_CONTEXT - 1, add_special_tokens=True, truncation=True,
                  padding="max_length", return_token_type_ids=False, return_tensors="pt")["input_ids"]
        ids = F.pad(ids, (0, 1), value=tok.pad_token_id).to(self.mean.device)
        text = ids[:, :-1]  # the last slot is where the text tower puts its CLS
        latent, _ = self.text(text)
        return F.normalize(latent.float(), dim=-1)


def _first_mismatch(e: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
    return lines[0].rstrip(".") if lines else str(e).splitlines()[0]


def build_conch(spec: str, image_size: int = 224) -> ConchBackbone:
    if image_size % PATCH_SIZE:
        raise ConstructError(f"--image-size {image_size} is not a multiple of CONCH's patch size {PATCH_SIZE}")
    weights = resolve_conch_weights(spec)
    with seeded_init():  # every weight is overwritten below; this only keeps the caller's RNG untouched
        model = build_coca(weights.tiny, image_size)
    state = resample_pos_embed(weights.state_dict, model)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # tensors of the wrong shape
        raise ConstructError(f"{spec}: checkpoint does not match the CONCH architecture ({_first_mismatch(e)})") from e
    check_keys(list(missing), list(unexpected), spec, lambda k: k.startswith(UNUSED_PREFIXES))
    used = [(k, v) for k, v in model.state_dict().items()]
    recipe = BackboneRecipe(
        family="conch", spec=spec,
        arch="conch_ViT-B-16" + ("-tiny" if weights.tiny else ""),
        image_size=image_size, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
        taps=tuple(tap_name(b) for b in TAP_BLOCKS) + ("conch_cls", "conch_embedding"),
        fingerprint=fingerprint(iter(used)), random_weights=weights.random_weights,
    )
    return ConchBackbone(model, recipe)
