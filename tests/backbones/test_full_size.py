"""Full-size `random` builds: the documented architectures (docs/design.md section 2), tap shapes, parameter counts."""

from __future__ import annotations

import gc

import pytest
import torch
from timm.layers import resample_abs_pos_embed

from construct.backbones.conch import _conch_module, build_conch

CONCH_TAPS = ("conch_b3", "conch_b6", "conch_b9", "conch_b12")


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_conch_trunk_is_vit_b16(conch_full):
    conch, rng_kept = conch_full
    assert rng_kept, "building `random` CONCH changed the global torch RNG state"
    trunk = conch.trunk
    assert trunk.embed_dim == 768 and len(trunk.blocks) == 12 and trunk.blocks[0].attn.num_heads == 12
    assert trunk.patch_embed.patch_size == (16, 16)
    # timm ViT-B/16 without classifier at 224 px: 85.80M (86M in the literature, which counts the head)
    assert abs(n_params(trunk) - 85.80e6) < 0.05e6, n_params(trunk)
    assert conch.recipe.arch == "conch_ViT-B-16" and conch.recipe.random_weights
    assert conch.recipe.image_size == 224
    assert conch.recipe.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert conch.recipe.std == pytest.approx((0.26862954, 0.26130258, 0.27577711))
    assert not conch.training and not any(p.requires_grad for p in conch.parameters())
    conch.train()
    assert not conch.training  # frozen: train() never turns dropout/drop-path on


def test_conch_taps_at_224(conch_full):
    conch, _ = conch_full
    with torch.no_grad():
        taps = conch.taps(torch.rand(1, 3, 224, 224))
    for name in CONCH_TAPS:
        assert taps[name].shape == (1, 196, 768), name
    assert taps["conch_cls"].shape == (1, 768)
    assert taps["conch_embedding"].shape == (1, 512)
    torch.testing.assert_close(taps["conch_embedding"].norm(dim=-1), torch.ones(1))
    # the taps are the residual stream before the final norm: block 12's output, not trunk.norm's
    with torch.no_grad():
        x = (torch.rand(1, 3, 224, 224) - conch.mean) / conch.std
        outs = []
        hooks = [conch.trunk.blocks[b - 1].register_forward_hook(lambda m, i, o: outs.append(o)) for b in (3, 6, 9, 12)]
        try:
            conch.trunk.forward_features(x)
        finally:
            for h in hooks:
                h.remove()
        taps = conch.taps(x * conch.std + conch.mean)
    for name, out in zip(CONCH_TAPS, outs):
        torch.testing.assert_close(taps[name], out[:, 1:], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(taps["conch_cls"], outs[-1][:, 0], rtol=1e-4, atol=1e-4)
    # The embedding is CONCH's contrastive head on the final-normed tokens; at full size the pooler's
    # query width (512) differs from the trunk's (768), so this checks the separate q/k/v projections.
    # The reference is the package's own pooler (nn.MultiheadAttention) loaded with the same weights.
    head = conch.contrastive_head
    assert not head.pooler.attn._qkv_same_embed_dim
    package_pooler = _conch_module("transformer").AttentionalPooler(512, 768, head.pooler.attn.num_heads, 1)
    package_pooler.load_state_dict(head.pooler.state_dict())
    with torch.no_grad():
        pooled = package_pooler(conch.trunk.norm(outs[-1]))[:, 0]
        ref = torch.nn.functional.normalize(head.ln_contrast(pooled) @ head.proj, dim=-1)
    torch.testing.assert_close(taps["conch_embedding"], ref, rtol=1e-4, atol=1e-4)


def test_conch_at_448_and_same_seeded_weights(conch_full):
    conch224, _ = conch_full
    before = torch.get_rng_state()
    conch448 = build_conch("random", 448)
    assert torch.equal(before, torch.get_rng_state())
    try:
        assert conch448.recipe.image_size == 448 and conch448.grid == 28
        with torch.no_grad():
            taps = conch448.taps(torch.rand(1, 3, 448, 448))
        for name in CONCH_TAPS:
            assert taps[name].shape == (1, 784, 768), name
        assert taps["conch_embedding"].shape == (1, 512)
        assert abs(n_params(conch448.trunk) - 86.25e6) < 0.05e6  # + the 28x28 positional grid
        # A second seeded build holds the same weights: the 224 px build's positional grid is the
        # native 448 px grid resampled once (bilinear, no antialias, CLS kept), everything else equal.
        s224, s448 = conch224.trunk.state_dict(), conch448.trunk.state_dict()
        assert s224.keys() == s448.keys()
        for k in s224:
            if k != "pos_embed":
                assert torch.equal(s224[k], s448[k]), k
        resampled = resample_abs_pos_embed(s448["pos_embed"], new_size=[14, 14], num_prefix_tokens=1,
                                           interpolation="bilinear", antialias=False)
        assert torch.equal(s224["pos_embed"], resampled)
        assert conch448.recipe.fingerprint != conch224.recipe.fingerprint  # the grid in use differs
    finally:
        del conch448
        gc.collect()


def test_segformer_mit_b1(segformer_full):
    seg, rng_kept = segformer_full
    assert rng_kept
    cfg = seg.model.config
    assert list(cfg.hidden_sizes) == [64, 128, 320, 512] and list(cfg.depths) == [2, 2, 2, 2]
    assert list(cfg.num_attention_heads) == [1, 2, 5, 8] and list(cfg.sr_ratios) == [8, 4, 2, 1]
    assert abs(n_params(seg.model) - 13.15e6) < 0.1e6, n_params(seg.model)
    assert seg.recipe.arch == "mit-b1" and seg.recipe.random_weights
    assert seg.recipe.mean == pytest.approx((0.485, 0.456, 0.406))
    assert seg.recipe.std == pytest.approx((0.229, 0.224, 0.225))
    seg.train()
    assert not seg.training and not seg.model.training
    with torch.no_grad():
        x = torch.rand(1, 3, 224, 224)
        taps = seg.taps(x)
        again = seg.taps(x)  # eval mode: no DropPath, deterministic
    expected = {"seg_s1": (64, 56, 56), "seg_s2": (128, 28, 28), "seg_s3": (320, 14, 14), "seg_s4": (512, 7, 7)}
    assert {k: tuple(v.shape[1:]) for k, v in taps.items()} == expected
    for k in taps:
        assert taps[k].shape[0] == 1
        assert torch.equal(taps[k], again[k])
