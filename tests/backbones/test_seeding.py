"""`random` / `random-tiny` are fixed weights: same spec, same fingerprint and taps; the caller's RNG untouched."""

from __future__ import annotations

import pytest
import torch

from construct.backbones import create_backbone
from construct.backbones.conch import build_conch
from construct.backbones.segformer import build_segformer
from construct.errors import ConstructError


@pytest.mark.parametrize("family, spec", [("conch", "random-tiny"), ("segformer", "random-tiny"), ("segformer", "random")])
def test_two_builds_are_identical_and_leave_the_rng_alone(family, spec):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = create_backbone(family, spec)
    b = create_backbone(family, spec)
    assert torch.equal(before, torch.get_rng_state())
    assert a.recipe == b.recipe
    assert len(a.recipe.fingerprint) == 64
    x = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ta, tb = a.taps(x), b.taps(x)
    assert ta.keys() == tb.keys() == set(a.recipe.taps)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_tiny_and_full_differ_and_are_labelled(conch_tiny, segformer_tiny, segformer_full):
    assert conch_tiny.recipe.arch == "conch_ViT-B-16-tiny"
    assert segformer_tiny.recipe.arch == "mit-b1-tiny"
    assert segformer_tiny.recipe.fingerprint != segformer_full[0].recipe.fingerprint
    # tiny keeps the tap layout: blocks 3/6/9/12 exist, 16 px patches
    assert len(conch_tiny.trunk.blocks) == 12 and conch_tiny.grid == 14
    with torch.no_grad():
        taps = conch_tiny.taps(torch.rand(1, 3, 224, 224))
    assert taps["conch_b12"].shape == (1, 196, conch_tiny.width)


def test_text_embeddings_are_unit_vectors_and_deterministic(conch_tiny):
    texts = ["tumor epithelial tissue", "stroma", "tumor epithelial tissue"]
    e = conch_tiny.text_embeddings(texts)
    assert e.shape == (3, conch_tiny.contrastive_head.embed_dim) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    assert torch.equal(e[0], e[2]) and not torch.equal(e[0], e[1])
    assert torch.equal(e, conch_tiny.text_embeddings(texts))


def test_soft_mask_pooling_matches_hard_selection(conch_tiny):
    """pool_masked's weights restrict attention: all ones = plain pooling; a 0/1 mask ~ dropping tokens."""
    head = conch_tiny.contrastive_head
    tokens = torch.randn(2, 197, conch_tiny.width, generator=torch.Generator().manual_seed(1))
    keep = torch.zeros(2, 197)
    keep[:, :50] = 1
    with torch.no_grad():
        plain = head(tokens)
        regions = head.pool_masked(tokens, torch.stack([torch.ones(2, 197), keep], dim=1), eps=1e-12)
        dropped = head(tokens[:, :50])
    assert plain.shape == (2, head.embed_dim) and regions.shape == (2, 2, head.embed_dim)
    torch.testing.assert_close(regions[:, 0], plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(regions[:, 1], dropped, rtol=1e-4, atol=1e-4)
    # round trip through the state a store keeps
    rebuilt = type(head).from_state_dict({k: v.clone() for k, v in head.export_state().items()})
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.pool_masked(tokens, keep[:, None]), head.pool_masked(tokens, keep[:, None]))


def test_unknown_family_and_bad_image_size():
    with pytest.raises(ConstructError, match="unknown backbone family"):
        create_backbone("resnet", "random")
    with pytest.raises(ConstructError, match="patch size 16"):
        build_conch("random-tiny", 200)
    with pytest.raises(ConstructError, match="not found"):
        build_segformer("/nonexistent/mit_b1.pth")
