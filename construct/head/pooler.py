"""CONCH's frozen contrastive image head, as the contrast term uses it: region embeddings of stored tokens.

It belongs with the head, not the backbone: `train` rebuilds it from the weights a store keeps and reads
nothing else. Parameter names are CONCH's (`norm`, `pooler.query`, `pooler.ln_q`, `pooler.ln_k`,
`pooler.attn.*`, `ln_contrast`, `proj`), so the state that extraction saves loads as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from construct.seeding import seeded_init

# CONCH's trunk is a timm ViT, whose final LayerNorm uses eps 1e-6 (torch's default, 1e-5, is what the
# pooler's and the contrastive projection's own norms use).
TRUNK_NORM_EPS = 1e-6


class TokenPooler(nn.Module):
    """The weights of CONCH's attentional pooler: learned queries attending over the tokens."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)


class ContrastiveHead(nn.Module):
    """Final trunk norm → attentional pooler → ln → projection, frozen.

    `weights` (B, M, N) in [0, 1] restrict which tokens the single query attends to, through an additive
    log-mask, so a pooled region embedding stays differentiable in a soft (CAM) mask.
    """

    def __init__(self, width: int, d_model: int, n_head: int, n_queries: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=TRUNK_NORM_EPS)
        self.pooler = TokenPooler(d_model, width, n_head, n_queries)
        self.ln_contrast = nn.LayerNorm(d_model)
        self.proj = nn.Parameter(torch.zeros(d_model, out_dim), requires_grad=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ContrastiveHead:
        """Rebuild from the weights a store keeps (see `export_state`), with widths read off the tensors."""
        n_queries, d_model = state["pooler.query"].shape
        with seeded_init():  # every weight is overwritten below; this only keeps the caller's RNG untouched
            head = cls(width=state["norm.weight"].shape[0], d_model=d_model, n_head=int(state["n_head"].item()),
                       n_queries=n_queries, out_dim=state["proj"].shape[1])
        head.load_state_dict({k: v for k, v in state.items() if k != "n_head"})
        return head.requires_grad_(False)

    def export_state(self) -> dict[str, torch.Tensor]:
        """The weights as float32 tensors plus `n_head`, which leaves no trace in the weights' shapes."""
        state = {k: v.detach().cpu().float() for k, v in self.state_dict().items()}
        state["n_head"] = torch.tensor(float(self.pooler.attn.num_heads))
        return state

    @property
    def embed_dim(self) -> int:
        return self.proj.shape[1]

    def pool_masked(self, tokens: torch.Tensor, weights: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """Embeddings of M soft regions per image: tokens (B, N, D), weights (B, M, N) → (B, M, E).

        The pooler has a single learned query, so keys, values and the attention logits are computed
        once per image and only the additive log-mask differs per region: M regions cost about one.
        """
        attn = self.pooler.attn
        if attn._qkv_same_embed_dim:  # token width == query width (the tiny test CONCH)
            wq, wk, wv = attn.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight
        bq, bk, bv = attn.in_proj_bias.chunk(3) if attn.in_proj_bias is not None else (None, None, None)
        x = self.pooler.ln_k(self.norm(tokens))
        b, n, _ = x.shape
        h = attn.num_heads
        e = attn.embed_dim
        q = F.linear(self.pooler.ln_q(self.pooler.query[:1]), wq, bq).view(h, e // h)
        k = F.linear(x, wk, bk).view(b, n, h, e // h)
        v = F.linear(x, wv, bv).view(b, n, h, e // h)
        logits = torch.einsum("hd,bnhd->bhn", q, k) / math.sqrt(e // h)  # (B, h, N)
        logits = logits[:, None] + torch.log(weights.to(logits.dtype) + eps)[:, :, None, :]  # (B, M, h, N)
        pooled = torch.einsum("bmhn,bnhd->bmhd", logits.softmax(dim=-1), v).reshape(b, -1, e)
        pooled = attn.out_proj(pooled)
        return F.normalize(self.ln_contrast(pooled) @ self.proj, dim=-1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """CONCH's image embedding (B, E) of all tokens."""
        ones = tokens.new_ones(tokens.shape[0], 1, tokens.shape[1])
        return self.pool_masked(tokens, ones)[:, 0]
