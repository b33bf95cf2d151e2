"""The contrastive pooler lives with the head: it rebuilds CONCH's image head from a store's weights alone."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import construct
from construct.backbones.conch import build_coca, contrastive_head
from construct.head.pooler import ContrastiveHead
from construct.seeding import seeded_init

PACKAGE = Path(construct.__file__).parent


@pytest.fixture(scope="module")
def coca():
    with seeded_init(5):
        model = build_coca(tiny=True, image_size=224)
    # Untrained norms are the identity; give every norm a scale and shift so that a wrong eps or a
    # skipped norm shows.
    with torch.no_grad(), seeded_init(6):
        for m in model.modules():
            if isinstance(m, torch.nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.eval()


def conch_embedding(model, tokens: torch.Tensor) -> torch.Tensor:
    """CONCH's own path: trunk norm → attentional pooler → ln_contrast → projection, L2-normalised."""
    v = model.visual
    pooled = v.attn_pool_contrast(v.trunk.norm(tokens))[:, 0]
    return F.normalize(v.ln_contrast(pooled) @ v.proj_contrast, dim=-1)


def test_store_state_rebuilds_conchs_image_head(coca):
    # Small token values make the trunk norm's eps matter (1e-6 in timm's ViT, 1e-5 in torch's default).
    tokens = 0.01 * torch.randn(2, 197, 64, generator=torch.Generator().manual_seed(0))
    state = contrastive_head(coca).export_state()
    head = ContrastiveHead.from_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(head(tokens), conch_embedding(coca, tokens), rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in head.parameters())


def test_region_mask_selects_tokens(coca):
    head = contrastive_head(coca)
    tokens = torch.randn(1, 10, 64, generator=torch.Generator().manual_seed(1))
    keep = torch.zeros(1, 1, 10)
    keep[..., :4] = 1
    with torch.no_grad():
        region = head.pool_masked(tokens, keep)[:, 0]
        torch.testing.assert_close(region, conch_embedding(coca, tokens[:, :4]), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("folder", ["train", "head"])
def test_training_and_head_import_no_backbone_code(folder):
    for path in (PACKAGE / folder).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            assert not any(n.startswith("construct.backbones") for n in names), f"{path} imports {names}"
