"""TTA variants and their undoing: flips are undone exactly, so the averaged scores are flip-equivariant."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from construct.head.io import load_head
from construct.head.model import ConStructHead, HeadConfig
from construct.inference.head import tile_scores, variant_cams
from construct.inference.tta import IDENTITY, Variant, expand, paper_variants, undo, variants_for
from construct.seeding import seeded_init


def asymmetric_images(b: int = 2, size: int = 224) -> torch.Tensor:
    """Tiles whose content differs left to right (a ramp, a block, noise)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(b, 3, size, size, generator=g) * 0.3
    x += torch.linspace(0, 0.6, size).view(1, 1, 1, size)
    x[:, 0, 40:120, 20:70] = 0.95
    return x.clamp(0, 1)


def test_paper_variants_are_flip_times_brightness():
    v = paper_variants()
    assert len(v) == 6 and len(set(v)) == 6
    assert {x.flip for x in v} == {False, True}
    assert sorted({x.brightness for x in v}) == [0.9, 1.0, 1.1]
    assert variants_for(False) == IDENTITY == (Variant(False, 1.0),)


def test_expand_then_undo_gives_back_each_brightness_exactly():
    x = asymmetric_images()
    v = paper_variants()
    batch = expand(x, v)
    assert batch.shape == (2 * 6, 3, 224, 224)
    back = undo(batch, v)  # an identity "model": only the flips need undoing
    for i, var in enumerate(v):
        expected = (x * var.brightness).clamp(0, 1)
        assert torch.equal(back[:, i], expected)
    assert batch.min() >= 0 and batch.max() <= 1  # brightness 1.1 is clamped


class PatchBackbone:
    """A flip-equivariant stand-in for CONCH: each token is a per-patch function of the patch's mean colour."""

    def __init__(self, width: int = 16):
        g = torch.Generator().manual_seed(1)
        self.proj = torch.randn(3, width, generator=g)

    def taps(self, images01: torch.Tensor, with_embedding: bool = True) -> dict[str, torch.Tensor]:
        t = torch.einsum("bchw,cd->bhwd", F.avg_pool2d(images01, 16), self.proj).flatten(1, 2)
        return {"conch_b3": t, "conch_b6": torch.tanh(t), "conch_b9": t * t, "conch_b12": torch.sin(3 * t)}


def equivariant_head(width: int = 16) -> ConStructHead:
    """A random head whose every op commutes with a horizontal flip (depthwise kernels made symmetric)."""
    with seeded_init(4):
        head = ConStructHead(HeadConfig(n_classes=4, width=width, embed_dim=8))
        for adapter in head.adapters.values():
            for p in adapter.parameters():
                torch.nn.init.normal_(p, std=0.3)
            dw = adapter.body[3].weight
            dw.data = (dw.data + dw.data.flip(-1)) / 2
            for bn in (adapter.body[1], adapter.body[4]):
                bn.running_mean.normal_(0, 0.1)
                bn.running_var.uniform_(0.5, 1.5)
        # The stand-in's tokens span only 3 dimensions (mean colours), so a class's cosine often has one
        # sign everywhere and ReLU blanks its map. Wide random projections with biases (and this seed)
        # leave most maps of every level spanning [0, 1].
        for p in head.adaptive.parameters():
            torch.nn.init.normal_(p, std=1.0)
    return head.eval()


def test_flip_is_exactly_undone_with_an_equivariant_head():
    x = asymmetric_images()
    v = paper_variants()
    maps, _ = variant_cams(x, PatchBackbone(), equivariant_head(), v)
    for m in maps.values():
        assert m.shape[:3] == (2, 6, 4)
        assert (m.amax(dim=(-2, -1)) > 0.9).float().mean() > 0.5  # most maps span [0, 1] (min-max)
        for i in range(3):  # (no flip, b) and (flip, b) agree once the flip is undone
            assert v[i].brightness == v[3 + i].brightness and not v[i].flip and v[3 + i].flip
            torch.testing.assert_close(m[:, i], m[:, 3 + i], atol=1e-5, rtol=1e-5)
        # ... and the maps are not left-right symmetric, so a missing (or doubled) undo would show.
        assert (m[:, 1] - m[:, 1].flip(-1)).abs().max() > 1e-2


def test_tta_scores_are_flip_equivariant_for_any_head(tiny_run):
    """T(flip x) = flip T(x) holds for every model exactly when each flipped variant is flipped back."""
    head, _ = load_head(tiny_run.run)
    x = asymmetric_images(1)
    both = torch.cat([x, x.flip(-1)])
    s, _ = tile_scores(both, tiny_run.conch, head, paper_variants(), "none")
    assert s.shape == (2, 5, 224, 224)
    torch.testing.assert_close(s[1], s[0].flip(-1), atol=1e-4, rtol=1e-4)
    # Without TTA the trained head is not flip-equivariant, so the check above is not vacuous.
    n, _ = tile_scores(both, tiny_run.conch, head, IDENTITY, "none")
    assert (n[1] - n[0].flip(-1)).abs().max() > 1e-3
