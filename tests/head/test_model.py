"""The text initialisation of the prototypes must survive the adaptive layers into the first CAMs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from construct.head.model import AdaptiveLayer, ConStructHead, HeadConfig

N_CLASSES = 4
SEEDS = (0, 1, 2)


def orthonormal_rows(n: int, dim: int) -> torch.Tensor:
    """n orthonormal text embeddings: the most distinct prototypes a class list can have."""
    q, _ = torch.linalg.qr(torch.randn(dim, n))
    return q.t().contiguous()


def mean_pairwise(sim: torch.Tensor) -> float:
    """Mean of the off-diagonal entries of a square similarity matrix."""
    n = sim.shape[-1]
    return ((sim.sum() - sim.diagonal().sum()) / (n * n - n)).item()


def mean_pairwise_cosine(x: torch.Tensor) -> float:
    x = F.normalize(x, dim=-1)
    return mean_pairwise(x @ x.t())


@pytest.mark.parametrize("seed", SEEDS)
def test_orthogonal_text_embeddings_do_not_come_out_parallel(seed):
    """Full-size shapes (CONCH text 512 → 256 → 768). PyTorch's default Linear init maps these to mean
    cosine ~0.95 (a shared bias vector dominates); the authors' init (trunc-normal 0.02, zero bias) ~0.3."""
    torch.manual_seed(seed)
    layer = AdaptiveLayer(embed_dim=512, width=768, n_ratio=0.5)
    text = orthonormal_rows(N_CLASSES, 512)
    with torch.no_grad():
        projected = layer(text)
    assert mean_pairwise_cosine(text) == pytest.approx(0.0, abs=1e-5)
    assert mean_pairwise_cosine(projected) < 0.5


def test_projection_keeps_which_text_embeddings_are_close():
    """Two near-synonymous descriptions (cosine 0.9) must stay the closest pair after the projection."""
    torch.manual_seed(0)
    layer = AdaptiveLayer(embed_dim=512, width=768, n_ratio=0.5)
    text = orthonormal_rows(N_CLASSES, 512)
    text[1] = F.normalize(0.9 * text[0] + (1 - 0.9**2) ** 0.5 * text[1], dim=0)
    with torch.no_grad():
        p = F.normalize(layer(text), dim=-1)
    sim = p @ p.t()
    others = [sim[i, j].item() for i in range(N_CLASSES) for j in range(i + 1, N_CLASSES) if (i, j) != (0, 1)]
    assert sim[0, 1].item() > max(others) + 0.2


@pytest.mark.parametrize("seed", SEEDS)
def test_cams_of_different_classes_differ_before_training(seed):
    """At step 0 (adapters are the identity) each class's CAM is the cosine of the features with that
    class's projected prototype: orthogonal text must give class maps that are far from one another.
    Measured as the mean correlation over pixels between two classes' maps: ~0.3 here, ~0.94 with
    PyTorch's default init of the adaptive layers."""
    torch.manual_seed(seed)
    cfg = HeadConfig(n_classes=N_CLASSES, width=96, embed_dim=64)
    head = ConStructHead(cfg, orthonormal_rows(N_CLASSES, cfg.embed_dim)).eval()
    taps = {f"conch_b{b}": torch.randn(2, 196, cfg.width) for b in cfg.blocks()}
    with torch.no_grad():
        out = head(taps)
    for level, cam in out.cams.items():
        maps = F.normalize(cam.flatten(2) - cam.flatten(2).mean(dim=2, keepdim=True), dim=2)  # (B, C, N)
        corr = torch.einsum("bcn,bdn->bcd", maps, maps)
        mean_corr = sum(mean_pairwise(c) for c in corr) / len(corr)
        assert mean_corr < 0.6, f"level {level}: class CAMs correlate at {mean_corr:.2f}"


@pytest.mark.parametrize("align_corners, expected", [
    (False, [0.0, 0.25, 0.75, 1.0]),  # cell centres at 1/4 and 3/4 of the image: each cell over its patch
    (True, [0.0, 1 / 3, 2 / 3, 1.0]),  # corner cells pinned to the corner pixels (the authors')
])
def test_cam_upsampling_follows_align_corners(align_corners, expected):
    cfg = HeadConfig(n_classes=1, width=8, embed_dim=8, cam_levels=(4,), bce_weights=(1.0,), fuse_weights=(1.0,),
                     distill_levels=(4,), grid=2, align_corners=align_corners)
    head = ConStructHead(cfg)
    level_map = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).view(1, 1, 2, 2)
    fused = head.fuse_levels({4: level_map}, size=4)
    torch.testing.assert_close(fused[0, 0, 0], torch.tensor(expected))
