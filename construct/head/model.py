"""The learned head: residual adapters on CONCH block taps, text-initialised prototypes, cosine CAMs.

Data flow, chosen for cost (see benchmarks/README.md): each adapter runs on the native token grid
(14x14 at 224 px: the tokens hold no more than that), and its output is then resized to the level's
pyramid resolution (x2 for level 2, x1 for level 3, /2 for level 4). Only levels that feed a CAM or a
loss are built. Every loss reaches the parameters of the fused inference CAM: the distilled level is a
CAM level, and the contrastive term is computed from the fused CAM.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

# Level k reads CONCH block LEVEL_BLOCKS[k] and works at LEVEL_SCALES[k] x the token grid.
LEVEL_BLOCKS = {1: 3, 2: 6, 3: 9, 4: 12}
LEVEL_SCALES = {1: 4.0, 2: 2.0, 3: 1.0, 4: 0.5}


@dataclass
class HeadConfig:
    """Head shape and the paper's per-level weights; saved with every run."""

    n_classes: int
    width: int = 768  # CONCH token width
    embed_dim: int = 512  # CONCH joint embedding (text prototypes)
    cam_levels: tuple[int, ...] = (2, 3, 4)
    bce_weights: tuple[float, ...] = (0.1, 1.0, 1.0)  # per CAM level
    fuse_weights: tuple[float, ...] = (0.3, 0.3, 0.4)  # per CAM level, at inference
    distill_levels: tuple[int, ...] = (3,)
    n_ratio: float = 0.5  # hidden width of the adaptive layers, relative to embed_dim
    tau_init: float = 1 / 0.07
    grid: int = 14
    align_corners: bool = False  # of the CAMs' bilinear upsampling in `fuse_levels` (True: the authors')

    def __post_init__(self) -> None:
        self.cam_levels = tuple(self.cam_levels)
        self.bce_weights = tuple(self.bce_weights)
        self.fuse_weights = tuple(self.fuse_weights)
        self.distill_levels = tuple(self.distill_levels)
        if not (len(self.cam_levels) == len(self.bce_weights) == len(self.fuse_weights)):
            raise ValueError("cam_levels, bce_weights and fuse_weights must have the same length")
        if not set(self.distill_levels) <= set(self.cam_levels):
            # A distilled level that feeds no CAM could not change the masks (the reference code's defect).
            raise ValueError("every distilled level must also be a CAM level")

    @property
    def levels(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.cam_levels) | set(self.distill_levels)))

    def blocks(self) -> tuple[int, ...]:
        return tuple(LEVEL_BLOCKS[k] for k in self.levels)

    def level_size(self, level: int) -> int:
        return max(1, int(round(self.grid * LEVEL_SCALES[level])))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> HeadConfig:
        return cls(**d)


class ResidualAdapter(nn.Module):
    """x + (1x1 → BN → GELU → 3x3 depthwise → BN → GELU → 1x1)(x); last conv zero-initialised, so
    the adapter starts as the identity on CONCH's features."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 3, padding=1, groups=width), nn.BatchNorm2d(width), nn.GELU(),
            nn.Conv2d(width, width, 1),
        )
        nn.init.zeros_(self.body[-1].weight)
        nn.init.zeros_(self.body[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


# Std of the adaptive layers' truncated-normal weights (the authors' init; their biases start at 0).
ADAPTIVE_INIT_STD = 0.02


class AdaptiveLayer(nn.Module):
    """Maps prototypes from the text space into one level's feature space.

    Initialised as the authors do: truncated-normal weights of std 0.02, zero biases. PyTorch's default
    Linear init (uniform weights of bound 1/sqrt(fan_in) and biases of the same scale) adds one shared
    bias vector that dominates the output: four orthogonal text embeddings come out at mean pairwise
    cosine ~0.95, so the CAMs would start class-identical whatever the text says. Without biases the
    output is a function of the text alone and keeps its pairwise structure (the same four: ~0.3).
    """

    def __init__(self, embed_dim: int, width: int, n_ratio: float):
        super().__init__()
        hidden = int(embed_dim * n_ratio)
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, width))
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=ADAPTIVE_INIT_STD)
                nn.init.zeros_(layer.bias)

    def forward(self, p: torch.Tensor) -> torch.Tensor:
        return self.net(p)


@dataclass
class HeadOutput:
    features: dict[int, torch.Tensor]  # level → adapted features (B, D, h_k, w_k)
    cams: dict[int, torch.Tensor] = field(default_factory=dict)  # level → (B, C, h_k, w_k) scaled cosine
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # level → (B, C) GAP of the CAM

    def float(self) -> HeadOutput:
        """fp32 copies of every map: after a bf16 forward, losses and CAM statistics are computed in fp32."""
        return HeadOutput(**{f.name: {k: v.float() for k, v in getattr(self, f.name).items()} for f in fields(self)})


def tokens_to_map(tokens: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, N, D) patch tokens → (B, D, g, g); maps already (B, D, g, g) pass through."""
    if tokens.ndim == 4:
        return tokens
    b, n, d = tokens.shape
    return tokens.transpose(1, 2).reshape(b, d, grid, grid)


def resize(x: torch.Tensor, size: int, align_corners: bool = False) -> torch.Tensor:
    """Square maps to `size`: average pooling by whole factors, else bilinear."""
    if x.shape[-1] == size:
        return x
    if x.shape[-1] % size == 0:
        return F.avg_pool2d(x, x.shape[-1] // size)
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=align_corners)


class ConStructHead(nn.Module):
    def __init__(self, config: HeadConfig, text_embeddings: torch.Tensor | None = None):
        super().__init__()
        self.config = config
        c = config
        self.adapters = nn.ModuleDict({str(k): ResidualAdapter(c.width) for k in c.levels})
        self.adaptive = nn.ModuleDict({str(k): AdaptiveLayer(c.embed_dim, c.width, c.n_ratio) for k in c.cam_levels})
        self.log_tau = nn.ParameterDict(
            {str(k): nn.Parameter(torch.tensor(math.log(c.tau_init))) for k in c.cam_levels}
        )
        if text_embeddings is not None:
            init = F.normalize(text_embeddings.detach().float().clone(), dim=-1)
        else:
            init = F.normalize(torch.randn(c.n_classes, c.embed_dim), dim=-1)
        self.prototypes = nn.Parameter(init)

    @property
    def input_taps(self) -> tuple[str, ...]:
        return tuple(f"conch_b{b}" for b in self.config.blocks())

    def n_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def forward(self, taps: dict[str, torch.Tensor], with_cams: bool = True) -> HeadOutput:
        """taps: `conch_b{block}` → patch tokens (B, N, D) or maps (B, D, g, g)."""
        c = self.config
        out = HeadOutput(features={})
        for k in c.levels:
            # Channels-last, as the tokens are laid out anyway: the 1x1 convolutions run as plain matrix
            # products and the per-pixel cosine below reads contiguous feature vectors.
            x = tokens_to_map(taps[f"conch_b{LEVEL_BLOCKS[k]}"].float(), c.grid).contiguous(
                memory_format=torch.channels_last)
            out.features[k] = resize(self.adapters[str(k)](x), c.level_size(k))
        if with_cams:
            for k in c.cam_levels:
                protos = self.adaptive[str(k)](self.prototypes)  # (C, D)
                f = out.features[k]
                # cos = <f, p/|p|> / |f|: the values of normalising f first, without dividing all D channels
                # at every pixel (and its backward). With channels-last: a fifth off a training step.
                dots = torch.einsum("bdhw,cd->bchw", f, F.normalize(protos, dim=-1))
                cos = dots / torch.linalg.vector_norm(f, dim=1, keepdim=True).clamp_min(1e-12)
                out.cams[k] = self.log_tau[str(k)].exp() * cos
                out.logits[k] = out.cams[k].mean(dim=(2, 3))
        return out

    def fused_cam(self, out: HeadOutput, size: int | None = None) -> torch.Tensor:
        """The inference CAM (B, C, size, size) in [0, 1]: per level ReLU and per-class min-max at the
        level's own resolution, then resized to `size` (default: the token grid) and weighted."""
        return self.fuse_levels(self.level_maps(out), size)

    def level_maps(self, out: HeadOutput) -> dict[int, torch.Tensor]:
        """Per CAM level, ReLU then per-class min-max at the level's own resolution: (B, C, h_k, w_k)."""
        return {k: minmax_per_class(F.relu(out.cams[k])) for k in self.config.cam_levels}

    def fuse_levels(self, maps: dict[int, torch.Tensor], size: int | None = None) -> torch.Tensor:
        """Resize `level_maps` (or any per-level maps, e.g. averaged over TTA variants, which commutes
        with this linear step) to `size` (default: the token grid) and weight them into one map."""
        size = size or self.config.grid
        fused = 0.0
        for k, w in zip(self.config.cam_levels, self.config.fuse_weights):
            fused = fused + w * resize(maps[k], size, self.config.align_corners)
        return fused


def minmax_per_class(cam: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Scale each (image, class) map to [0, 1]."""
    flat = cam.flatten(2)
    lo = flat.min(dim=2, keepdim=True).values
    hi = flat.max(dim=2, keepdim=True).values
    return ((flat - lo) / (hi - lo + eps)).view_as(cam)
