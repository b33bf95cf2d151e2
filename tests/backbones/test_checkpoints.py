"""Loading weights from files: the official CONCH checkpoint layout, NVlabs and transformers SegFormer
weights, refusals of files that do not fit, and offline `hf:` specs."""

from __future__ import annotations

import copy
import pathlib
import re

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from construct.backbones.conch import _conch_module, build_conch, conch_config
from construct.backbones.segformer import MIT_TINY, build_segformer
from construct.errors import ConstructError

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def coca_with_caption_pooler(image_size: int) -> torch.nn.Module:
    """The tiny CoCa as the released checkpoint's model is: caption pooler and its norm present, no decoder."""
    cfg = copy.deepcopy(conch_config(True, image_size))
    cfg["vision_cfg"]["attentional_pool_caption"] = True
    return _conch_module("coca_model").CoCa(**cfg).eval()


@pytest.fixture(scope="module")
def official_style(tmp_path_factory):
    """(path, state dict) of a tiny checkpoint written the way CONCH's pytorch_model.bin is (448 px)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = coca_with_caption_pooler(448)
    sd = model.state_dict()
    assert any(k.startswith("visual.attn_pool_caption.") for k in sd) and any(k.startswith("visual.ln_caption.") for k in sd)
    assert not any(k.startswith("text_decoder.") for k in sd)
    assert sd["visual.trunk.pos_embed"].shape[1] == 1 + 28 * 28
    path = tmp_path_factory.mktemp("conch") / "pytorch_model.bin"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def source_at_224(official_style):
    """The checkpoint's own model at 224 px, positional grid resampled as CONCH's force_image_size does."""
    _, sd = official_style
    model = coca_with_caption_pooler(224)
    sd = dict(sd)
    sd["visual.trunk.pos_embed"] = resample_abs_pos_embed(
        sd["visual.trunk.pos_embed"], new_size=[14, 14], num_prefix_tokens=1, interpolation="bilinear", antialias=False
    )
    model.load_state_dict(sd, strict=True)
    return model


def reference_taps(model, images01):
    x = (images01 - CLIP_MEAN) / CLIP_STD
    outs = []
    hooks = [model.visual.trunk.blocks[b - 1].register_forward_hook(lambda m, i, o: outs.append(o)) for b in (3, 6, 9, 12)]
    try:
        with torch.no_grad():
            emb = model.encode_image(x, normalize=True)
    finally:
        for h in hooks:
            h.remove()
    return outs, emb


@pytest.fixture(scope="module")
def images():
    return torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


# ---- CONCH ------------------------------------------------------------------------------------------
def test_official_layout_loads_and_matches_the_source_model(official_style, source_at_224, images):
    path, _ = official_style
    before = torch.get_rng_state()
    conch = build_conch(str(path))
    assert torch.equal(before, torch.get_rng_state())
    assert conch.recipe.arch == "conch_ViT-B-16-tiny"  # width and depth read off the file
    assert not conch.recipe.random_weights and conch.recipe.spec == str(path)
    with torch.no_grad():
        taps = conch.taps(images)
    outs, emb = reference_taps(source_at_224, images)
    for b, out in zip((3, 6, 9, 12), outs):
        torch.testing.assert_close(taps[f"conch_b{b}"], out[:, 1:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps["conch_cls"], outs[-1][:, 0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(taps["conch_embedding"], emb, rtol=1e-5, atol=1e-5)


def test_wrapped_prefixed_and_safetensors_checkpoints_give_the_same_weights(official_style, tmp_path):
    from safetensors.torch import save_file

    path, sd = official_style
    ref = build_conch(str(path)).recipe.fingerprint
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, wrapped)
    st = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in sd.items()}, str(st))
    for p in (wrapped, st):
        assert build_conch(str(p)).recipe.fingerprint == ref, p


def test_the_same_file_at_448(official_style, images):
    path, _ = official_style
    conch = build_conch(str(path), 448)
    assert conch.grid == 28
    with torch.no_grad():
        taps = conch.taps(torch.nn.functional.interpolate(images, size=448, mode="bilinear"))
    assert taps["conch_b12"].shape == (2, 784, 64)


def _save(tmp_path, sd, name="bad.bin"):
    p = tmp_path / name
    torch.save(sd, p)
    return str(p)


def test_checkpoints_that_do_not_fit_are_refused(official_style, tmp_path):
    _, sd = official_style
    extra = dict(sd, **{"visual.trunk.not_a_weight": torch.zeros(3)})
    with pytest.raises(ConstructError, match=r"1 unexpected keys \(e\.g\. visual\.trunk\.not_a_weight\)"):
        build_conch(_save(tmp_path, extra))
    missing = {k: v for k, v in sd.items() if not k.startswith("visual.trunk.blocks.4.attn.")}
    with pytest.raises(ConstructError, match=r"missing keys \(e\.g\. visual\.trunk\.blocks\.4\.attn"):
        build_conch(_save(tmp_path, missing))
    renamed = {k.replace("visual.trunk.", "visual.vit."): v for k, v in sd.items()}
    with pytest.raises(ConstructError, match=r"not a CONCH checkpoint: 1 missing keys \(e\.g\. visual\.trunk\.cls_token\)"):
        build_conch(_save(tmp_path, renamed))
    wrong_shape = dict(sd, **{"visual.trunk.blocks.0.mlp.fc1.weight": torch.zeros(128, 64)})
    with pytest.raises(ConstructError, match="size mismatch for visual.trunk.blocks.0.mlp.fc1.weight"):
        build_conch(_save(tmp_path, wrong_shape))
    narrow = {k: v for k, v in sd.items()}
    narrow["visual.trunk.cls_token"] = torch.zeros(1, 1, 32)
    with pytest.raises(ConstructError, match="not a CONCH ViT-B/16 checkpoint .*vision_width 32"):
        build_conch(_save(tmp_path, narrow))
    with pytest.raises(ConstructError, match="does not hold a state dict of tensors"):
        build_conch(_save(tmp_path, {"a": 1, "b": "text"}))
    with pytest.raises(ConstructError, match="not a CONCH checkpoint"):
        build_conch(_save(tmp_path, {"fc.weight": torch.zeros(2, 2)}))
    truncated = tmp_path / "truncated.bin"
    truncated.write_bytes(pathlib.Path(official_style[0]).read_bytes()[:5000])
    with pytest.raises(ConstructError, match="not a readable weights file"):
        build_conch(str(truncated))
    with pytest.raises(ConstructError, match="checkpoint file not found"):
        build_conch(str(tmp_path / "nope.bin"))


class _Payload:
    """Unpickling this would create a file: weights_only loading must refuse before that."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("builder", [build_conch, build_segformer])
def test_pickled_code_is_refused_not_run(tmp_path, builder):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"visual.trunk.cls_token": torch.zeros(1), "payload": _Payload(marker)}, path)
    with pytest.raises(ConstructError, match="not a readable weights file") as e:
        builder(str(path))
    assert not marker.exists()
    assert "\n" not in str(e.value)


# ---- SegFormer --------------------------------------------------------------------------------------
# transformers name → NVlabs name, per block (written here from the NVlabs MiT source, independently
# of construct's converter).
_TO_NVLABS_BLOCK = {
    "layernorm_before": "norm1", "layernorm_after": "norm2", "attention.q_proj": "attn.q",
    "attention.o_proj": "attn.proj", "attention.sequence_reduction.sequence_reduction": "attn.sr",
    "attention.sequence_reduction.layer_norm": "attn.norm", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "mlp.dwconv.dwconv": "mlp.dwconv.dwconv",
}


def to_nvlabs(sd: dict[str, torch.Tensor], n_classes: int = 1000) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        if m := re.fullmatch(r"stages\.(\d)\.patch_embeddings\.(proj|layer_norm)\.(weight|bias)", key):
            out[f"patch_embed{int(m[1]) + 1}.{'proj' if m[2] == 'proj' else 'norm'}.{m[3]}"] = v
        elif m := re.fullmatch(r"stages\.(\d)\.layer_norm\.(weight|bias)", key):
            out[f"norm{int(m[1]) + 1}.{m[2]}"] = v
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.attention\.(k|v)_proj\.(weight|bias)", key):
            if m[3] == "k":  # NVlabs fuses key and value into one `kv` linear, key rows first
                value = sd[key.replace(".k_proj.", ".v_proj.")]
                out[f"block{int(m[1]) + 1}.{m[2]}.attn.kv.{m[4]}"] = torch.cat([v, value], dim=0)
        elif m := re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)\.(.+)\.(weight|bias)", key):
            out[f"block{int(m[1]) + 1}.{m[2]}.{_TO_NVLABS_BLOCK[m[3]]}.{m[4]}"] = v
        else:
            raise AssertionError(f"unmapped key {key}")
    width = sd["stages.3.layer_norm.weight"].shape[0]
    out["head.weight"], out["head.bias"] = torch.randn(n_classes, width), torch.randn(n_classes)  # ImageNet head
    return out


@pytest.fixture(scope="module")
def segformer_source(tmp_path_factory):
    """A tiny MiT with uneven depths, saved as a transformers folder and as an NVlabs mit_b1.pth-style file."""
    from transformers import SegformerConfig, SegformerModel

    cfg = SegformerConfig(**{**MIT_TINY, "depths": [2, 1, 2, 1]}, sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
                          strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        model = SegformerModel(cfg).eval()
        for p in model.parameters():  # layer norms start at 1/0: make every tensor distinctive
            p.data.add_(0.05 * torch.randn_like(p))
    root = tmp_path_factory.mktemp("segformer")
    model.save_pretrained(root / "hf")
    nv = to_nvlabs(model.state_dict())
    assert "block1.0.attn.kv.weight" in nv and "block3.1.mlp.dwconv.dwconv.weight" in nv and "norm4.weight" in nv
    torch.save(nv, root / "mit_b1.pth")
    return model, root


def test_nvlabs_file_and_transformers_folder_give_identical_stages(segformer_source, images):
    model, root = segformer_source
    before = torch.get_rng_state()
    from_folder = build_segformer(str(root / "hf"))
    from_pth = build_segformer(str(root / "mit_b1.pth"))
    assert torch.equal(before, torch.get_rng_state())
    assert list(from_pth.model.config.depths) == [2, 1, 2, 1]  # depths and widths read off the file
    assert from_pth.stage_channels == from_folder.stage_channels == [16, 32, 40, 64]
    assert from_pth.recipe.fingerprint == from_folder.recipe.fingerprint
    assert not from_pth.recipe.random_weights and from_pth.recipe.arch == "mit-b1-tiny"
    with torch.no_grad():
        a, b = from_folder.taps(images), from_pth.taps(images)
        x = (images - torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1)) / torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
        ref = model(pixel_values=x, output_hidden_states=True).hidden_states
    for s in range(4):
        assert torch.equal(a[f"seg_s{s + 1}"], b[f"seg_s{s + 1}"])
        torch.testing.assert_close(a[f"seg_s{s + 1}"], ref[s], rtol=1e-5, atol=1e-5)
    assert a["seg_s3"].shape == (2, 40, 14, 14)


def test_segformer_files_that_do_not_fit_are_refused(segformer_source, tmp_path):
    _, root = segformer_source
    nv = torch.load(root / "mit_b1.pth", weights_only=True)
    bad = dict(nv, **{"block1.0.attn.qkv.weight": torch.zeros(3)})
    with pytest.raises(ConstructError, match="unexpected keys"):
        build_segformer(_save(tmp_path, bad, "a.pth"))
    missing = {k: v for k, v in nv.items() if not k.startswith("block2.0.mlp.")}
    with pytest.raises(ConstructError, match=r"missing keys \(e\.g\. stages\.1\.blocks\.0\.mlp"):
        build_segformer(_save(tmp_path, missing, "b.pth"))
    wrong = dict(nv, **{"block1.0.mlp.fc1.weight": torch.zeros(32, 16)})
    with pytest.raises(ConstructError, match="size mismatch"):
        build_segformer(_save(tmp_path, wrong, "c.pth"))
    with pytest.raises(ConstructError, match="not a MiT/SegFormer encoder checkpoint"):
        build_segformer(_save(tmp_path, {"fc.weight": torch.zeros(2, 2)}, "d.pth"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ConstructError, match="could not load a SegFormer from this folder"):
        build_segformer(str(tmp_path / "empty_folder"))


# ---- hub specs offline ------------------------------------------------------------------------------
@pytest.mark.parametrize("builder, spec, flag", [
    (build_conch, "hf:MahmoodLab/conch", "--conch"),
    (build_segformer, "hf:nvidia/mit-b1", "--segformer"),
])
def test_hub_specs_offline_say_how_to_pass_a_local_file(monkeypatch, tmp_path, builder, spec, flag):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(ConstructError) as e:
        builder(spec)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(spec) and flag in msg and "local" in msg
