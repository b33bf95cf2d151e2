"""The head's size, its saved form, and the joint augmentation of a sample's maps."""

from __future__ import annotations

import pytest
import torch

from construct.head.io import load_head, save_head
from construct.head.model import ConStructHead, HeadConfig
from construct.runs import write_run_config
from construct.train.augment import N_DIHEDRAL, apply_symmetries, dihedral, draw_symmetries


def expected_n_trainable(cfg: HeadConfig) -> int:
    """Closed form of the head's trainable parameters.

    Adapter (per level): two 1x1 convs (w² + w each), a 3x3 depthwise conv (9w + w), two BNs (2w each).
    Adaptive layer (per CAM level): Linear(e → h) + Linear(h → w), h = n_ratio · e.
    Plus the prototypes (C × e) and one temperature per CAM level.
    """
    w, e = cfg.width, cfg.embed_dim
    h = int(e * cfg.n_ratio)
    adapter = 2 * (w * w + w) + (9 * w + w) + 2 * (2 * w)
    adaptive = (e * h + h) + (h * w + w)
    return len(cfg.levels) * adapter + len(cfg.cam_levels) * (adaptive + 1) + cfg.n_classes * e


def test_full_size_head_parameter_count(capsys):
    """The paper reports 6.3M trainable parameters, the authors' code has 6.08M; ours (3 adapters on
    CONCH blocks 6/9/12 at 768 channels, 3 adaptive layers, 4 BCSS prototypes of 512-d) has 4.56M."""
    cfg = HeadConfig(n_classes=4, width=768, embed_dim=512)
    head = ConStructHead(cfg)
    n = head.n_trainable()
    with capsys.disabled():
        print(f"\nfull-size head (BCSS, 4 classes): {n:,} trainable parameters ({n / 1e6:.2f}M); "
              f"paper 6.3M, authors' code 6.08M")
    assert n == expected_n_trainable(cfg) == 4_563_971
    assert n == sum(p.numel() for p in head.parameters())  # nothing frozen inside the head


def test_parameter_count_formula_holds_for_other_shapes():
    cfg = HeadConfig(n_classes=3, width=64, embed_dim=64, cam_levels=(3, 4), bce_weights=(1, 1),
                     fuse_weights=(0.5, 0.5), distill_levels=(3,), n_ratio=0.25)
    assert ConStructHead(cfg).n_trainable() == expected_n_trainable(cfg)


def test_head_saved_and_loaded_gives_the_same_cams(tmp_path):
    cfg = HeadConfig(n_classes=4, width=64, embed_dim=64)
    torch.manual_seed(0)
    head = ConStructHead(cfg, torch.randn(4, 64))
    with torch.no_grad():
        for a in head.adapters.values():
            a.body[-1].weight.normal_(0, 0.1)
    head.train()
    taps = {f"conch_b{b}": torch.randn(3, 196, 64) for b in (6, 9, 12)}
    head(taps)  # moves the BN running statistics, which must be saved too
    head.eval()
    write_run_config(tmp_path, {"head": cfg.to_dict()})
    save_head(head, tmp_path / "head_last.safetensors")
    loaded, meta = load_head(tmp_path)  # no head_best: falls back to last
    assert meta["head"] == cfg.to_dict()
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(head.fused_cam(head(taps)), loaded.fused_cam(loaded(taps)))


def test_dihedral_group():
    x = torch.arange(16.0).view(1, 4, 4)
    images = [dihedral(x, k) for k in range(N_DIHEDRAL)]
    assert len({tuple(im.flatten().tolist()) for im in images}) == 8  # all distinct
    assert torch.equal(dihedral(x, 0), x)


def test_augmentation_applies_one_symmetry_to_every_map_of_a_sample():
    """A token map (D, 14, 14), a teacher map at another resolution and a mask-like map of the same
    sample must all get the same flip/rotation; different samples get independent ones."""
    b = 64
    base = torch.rand(b, 1, 28, 28)
    maps = {
        "conch_b9": base[:, :, ::2, ::2].repeat(1, 8, 1, 1),  # (B, 8, 14, 14): same picture, coarser
        "seg_s3": base.repeat(1, 3, 1, 1),  # (B, 3, 28, 28)
        "conch_b12": base[:, :, ::2, ::2] * 2,
    }
    out = apply_symmetries(maps, draw_symmetries(b, torch.Generator().manual_seed(0)))
    ks = []
    for i in range(b):
        fine = out["seg_s3"][i, 0]
        match = [k for k in range(N_DIHEDRAL) if torch.equal(dihedral(base[i, 0], k), fine)]
        assert match, f"sample {i}: seg map is not a symmetry of its input"
        k = match[0]
        ks.append(k)
        assert torch.equal(out["conch_b9"][i], dihedral(maps["conch_b9"][i], k))
        assert torch.equal(out["conch_b12"][i], dihedral(maps["conch_b12"][i], k))
        assert torch.equal(out["seg_s3"][i], dihedral(maps["seg_s3"][i], k))
    assert len(set(ks)) == N_DIHEDRAL  # 64 samples: every symmetry is drawn
    # seeded: the same generator seed gives the same symmetries
    again = apply_symmetries(maps, draw_symmetries(b, torch.Generator().manual_seed(0)))
    assert all(torch.equal(out[k], again[k]) for k in maps)


@pytest.mark.parametrize("k", range(N_DIHEDRAL))
def test_dihedral_commutes_with_resizing(k):
    """The symmetry of a 28x28 map, pooled to 14x14, is the symmetry of the pooled map: augmenting maps of
    different resolutions together keeps them aligned."""
    x = torch.rand(2, 3, 28, 28)
    pool = torch.nn.functional.avg_pool2d
    assert torch.allclose(pool(dihedral(x, k), 2), dihedral(pool(x, 2), k))
