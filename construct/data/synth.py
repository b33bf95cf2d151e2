"""A synthetic H&E-like dataset in the BCSS-WSSS layout, for tests and the demo.

Real BCSS-WSSS tiles cannot ship with the code, yet every phase needs tiles whose image-level labels
agree with hidden masks. The tiles here are procedural: irregular regions of one to three tissue
classes (sometimes with white background), each class drawn with its own colour and texture so that a
model looking at 16x16 patches can tell them apart, plus per-tile stain jitter and pixel noise so that a
single colour threshold cannot. Every tile comes from its own PCG64 stream seeded by (seed, split,
index), never from global state or the clock, so a dataset is byte-identical from run to run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from construct.data.classes import BCSS, ClassSet
from construct.data.dataset import IMAGE_SIZE, SPLITS, labels_from_mask, write_mask
from construct.errors import ConstructError

RGB = tuple[int, int, int]

MARKER_NAME = "construct_synth.json"

# Layout: how many tissue classes a tile holds (1, 2 or 3) and how often a background region appears.
CLASS_COUNT_PROBS = (0.3, 0.4, 0.3)
BACKGROUND_PROB = 0.3
BACKGROUND_BIAS = -0.25  # keeps background regions smaller than tissue ones on average
REGION_BIAS_SD = 0.15  # per-region offset of the layout field, varying region sizes
# A class counts as present only above this fraction of the tile; smaller regions are given to the
# neighbouring regions, so the file-name labels and the masks always agree.
MIN_REGION_FRACTION = 0.02
# (grid cells across the tile, amplitude) of the layout field: large blobs, irregular edges.
LAYOUT_OCTAVES = ((2, 1.0), (4, 0.5), (8, 0.25), (16, 0.12))

# Whole-tile variation.
STAIN_GAIN = 0.05  # per-channel multiplicative jitter of tissue colour, +-
STAIN_SHIFT = 8.0  # brightness offset of tissue colour, +- (0..255 scale)
LIGHTING = 0.04  # slow brightness modulation across the tile, relative
PIXEL_NOISE_SD = 4.0
BACKGROUND_COLOR: RGB = (244, 243, 246)

# Nuclei.
NUCLEUS_EDGE = 0.25  # width of the soft nucleus edge, as a fraction of its radius
NUCLEUS_SHADE = (0.8, 1.15)  # per-nucleus darkness range
CHROMATIN = 0.1  # fine intensity texture inside nuclei, relative
# Stroma fibres.
FIBRE_PERIOD = 7.0  # px between fibres
FIBRE_WARP = 9.0  # px of lateral waviness
FIBRE_SHARPNESS = 3.0  # exponent thinning the fibres
FIBRE_ANGLE_SD = 0.3  # radians by which stromal nuclei deviate from the fibre direction


@dataclass(frozen=True)
class NucleusStyle:
    """Nuclei of one class: one candidate per grid cell of `spacing` px, kept with `occupancy`."""

    spacing: float
    occupancy: float
    radius: float  # equivalent radius in px (area of a circle of this radius)
    radius_jitter: float  # relative standard deviation of the radius
    elongation: float  # major/minor axis ratio
    irregularity: float  # boundary roughness, 0 = smooth ellipse
    color: RGB
    aligned: bool = False  # oriented along the tile's fibre direction (stroma)


@dataclass(frozen=True)
class TissueStyle:
    """Colour and texture of one tissue class."""

    base: RGB  # matrix/cytoplasm colour
    texture_color: RGB  # colour the texture pulls towards (fibres, granules, mottling)
    texture: str  # "mottled", "fibres" or "granular"
    texture_strength: float
    nuclei: NucleusStyle


# The class table: distinct mean colour and texture per class at the 16x16-patch scale.
STYLES: dict[str, TissueStyle] = {
    # Dense, large, irregular dark-purple nuclei on purple-pink cytoplasm.
    "TUM": TissueStyle(
        base=(205, 130, 185), texture_color=(180, 105, 170), texture="mottled", texture_strength=0.6,
        nuclei=NucleusStyle(spacing=13, occupancy=0.85, radius=4.6, radius_jitter=0.25, elongation=1.4,
                            irregularity=0.35, color=(80, 35, 115)),
    ),
    # Pink wavy collagen fibres, sparse spindle nuclei along them.
    "STR": TissueStyle(
        base=(242, 190, 212), texture_color=(218, 108, 158), texture="fibres", texture_strength=0.9,
        nuclei=NucleusStyle(spacing=26, occupancy=0.3, radius=3.5, radius_jitter=0.2, elongation=5.0,
                            irregularity=0.1, color=(110, 50, 130), aligned=True),
    ),
    # Packed small round dark-blue nuclei on a light background.
    "LYM": TissueStyle(
        base=(228, 200, 230), texture_color=(205, 175, 215), texture="mottled", texture_strength=0.4,
        nuclei=NucleusStyle(spacing=8, occupancy=0.92, radius=2.9, radius_jitter=0.12, elongation=1.1,
                            irregularity=0.1, color=(45, 35, 120)),
    ),
    # Pale pink-grey granular debris with a few nuclear fragments.
    "NEC": TissueStyle(
        base=(226, 202, 212), texture_color=(188, 160, 178), texture="granular", texture_strength=0.8,
        nuclei=NucleusStyle(spacing=14, occupancy=0.25, radius=1.6, radius_jitter=0.4, elongation=1.3,
                            irregularity=0.5, color=(120, 80, 135)),
    ),
}
# Other class sets' names for the same tissues (LUAD-HistoSeg).
STYLE_ALIASES = {"TE": "TUM", "TAS": "STR"}


@dataclass(frozen=True)
class SynthConfig:
    """How many tiles per split, the seed, and the tile size in px."""

    n_train: int = 200
    n_valid: int = 40
    n_test: int = 40
    seed: int = 0
    size: int = IMAGE_SIZE


def _value_noise(rng: np.random.Generator, size: int, cells: int, n: int = 1) -> np.ndarray:
    """(n, size, size) smooth noise: a cells x cells Gaussian grid, smoothstep-interpolated."""
    grid = rng.standard_normal((n, cells + 1, cells + 1), dtype=np.float32)
    t = (np.arange(size) + 0.5) * (cells / size)
    i = np.minimum(t.astype(np.int64), cells - 1)
    f = t - i
    f = (f * f * (3.0 - 2.0 * f)).astype(np.float32)
    rows = grid[:, i, :] * (1 - f)[None, :, None] + grid[:, i + 1, :] * f[None, :, None]
    return rows[:, :, i] * (1 - f) + rows[:, :, i + 1] * f


def _fractal_noise(rng: np.random.Generator, size: int, octaves: tuple[tuple[int, float], ...], n: int = 1) -> np.ndarray:
    """Value noise summed over (cells, amplitude) octaves: large shapes with rough edges."""
    return sum(amp * _value_noise(rng, size, cells, n) for cells, amp in octaves)


def _layout(rng: np.random.Generator, size: int, n_classes: int) -> np.ndarray:
    """HxW region map of class positions (0..n_classes-1) and background (n_classes).

    Regions are the argmax of smooth random fields. Any region under MIN_REGION_FRACTION is removed and
    its pixels go to whichever field is next highest there, i.e. a neighbouring region.
    """
    k = 1 + int(rng.choice(len(CLASS_COUNT_PROBS), p=CLASS_COUNT_PROBS))
    labels = [int(c) for c in rng.choice(n_classes, size=k, replace=False)]
    has_background = rng.random() < BACKGROUND_PROB
    if has_background:
        labels.append(n_classes)
    fields = _fractal_noise(rng, size, LAYOUT_OCTAVES, len(labels))
    fields += REGION_BIAS_SD * rng.standard_normal(len(labels))[:, None, None]
    if has_background:
        fields[-1] += BACKGROUND_BIAS
    alive = [True] * len(labels)
    while True:
        region = fields.argmax(axis=0)
        area = np.bincount(region.ravel(), minlength=len(labels)) / region.size
        small = [i for i in range(len(labels)) if alive[i] and area[i] < MIN_REGION_FRACTION]
        if not small:
            break
        drop = min(small, key=lambda i: area[i])
        tissue_alive = [i for i in range(k) if alive[i]]
        if tissue_alive == [drop]:  # never drop the last tissue region; shrink the background away instead
            drop = len(labels) - 1
        alive[drop] = False
        fields[drop] = -np.inf
    return np.asarray(labels, dtype=np.int64)[region]


def _nuclei(
    rng: np.random.Generator, size: int, style: NucleusStyle, fibre_angle: float, ys: np.ndarray, xs: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Soft nucleus coverage (0..1) and nucleus shade at the pixels (ys, xs), fully vectorised.

    A jittered grid of candidate nuclei (a Worley-style layout): each pixel checks the nuclei of its own
    and the 8 neighbouring cells, so no nucleus may exceed one cell in half-length.
    """
    s = style.spacing
    n = math.ceil(size / s) + 2  # one cell of margin on each side
    jitter = rng.random((2, n, n))
    cy = (np.arange(n)[:, None] + jitter[0] - 1) * s
    cx = (np.arange(n)[None, :] + jitter[1] - 1) * s
    present = rng.random((n, n)) < style.occupancy
    radius = style.radius * np.clip(1 + style.radius_jitter * rng.standard_normal((n, n)), 0.5, 1.8)
    elongation = np.maximum(1.0, style.elongation * rng.uniform(0.8, 1.2, (n, n)))
    half_major = np.minimum(radius * np.sqrt(elongation), 0.95 * s)
    half_minor = radius / np.sqrt(elongation)
    if style.aligned:
        theta = fibre_angle + FIBRE_ANGLE_SD * rng.standard_normal((n, n))
    else:
        theta = rng.uniform(0, np.pi, (n, n))
    shade = rng.uniform(*NUCLEUS_SHADE, (n, n))
    rough = 1 + style.irregularity * _value_noise(rng, size, max(1, size // 3))[0]

    # Per-cell parameters, flattened for 1-D gathers; an empty cell's nucleus sits far outside the tile.
    far = np.where(present, 0.0, 1e6)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    params = [a.astype(np.float32).ravel() for a in (
        cy + far, cx + far, cos_t / half_major, sin_t / half_major, cos_t / half_minor, sin_t / half_minor, shade
    )]
    py, px = ys.astype(np.float32) + 0.5, xs.astype(np.float32) + 0.5
    cell_y, cell_x = (py // s).astype(np.int64) + 1, (px // s).astype(np.int64) + 1
    best = np.full(len(ys), np.inf, dtype=np.float32)
    best_shade = np.ones(len(ys), dtype=np.float32)
    for di in (-1, 0, 1):
        for dj in (-1, 0, 1):
            k = (cell_y + di) * n + (cell_x + dj)
            p_cy, p_cx, ua, ub, va, vb, p_shade = (q[k] for q in params)
            dy, dx = py - p_cy, px - p_cx
            u = dx * ua + dy * ub
            v = dy * va - dx * vb
            d2 = u * u + v * v
            closer = d2 < best
            np.copyto(best, d2, where=closer)
            np.copyto(best_shade, p_shade, where=closer)
    alpha = np.clip((1 - np.sqrt(best) * rough[ys, xs]) / NUCLEUS_EDGE, 0, 1)
    return alpha, best_shade


def _mottled(rng: np.random.Generator, size: int, fibre_angle: float) -> np.ndarray:
    return np.clip(0.5 + 0.4 * _fractal_noise(rng, size, ((size // 16, 1.0), (size // 8, 0.5)))[0], 0, 1)


def _granular(rng: np.random.Generator, size: int, fibre_angle: float) -> np.ndarray:
    return np.clip(0.5 + 0.5 * _fractal_noise(rng, size, ((size // 2, 1.0), (size // 6, 0.4)))[0], 0, 1)


def _fibres(rng: np.random.Generator, size: int, fibre_angle: float) -> np.ndarray:
    """Thin wavy streaks running along `fibre_angle`, broken up here and there."""
    coords = np.arange(size, dtype=np.float32)
    across = coords[None, :] * -math.sin(fibre_angle) + coords[:, None] * math.cos(fibre_angle)
    warp = FIBRE_WARP * _fractal_noise(rng, size, ((3, 1.0), (7, 0.4)))[0]
    streaks = ((1 + np.sin(2 * np.pi * (across + warp) / FIBRE_PERIOD)) / 2) ** FIBRE_SHARPNESS
    gaps = np.clip(0.7 + 0.6 * _value_noise(rng, size, 12)[0], 0, 1)
    return streaks * gaps


TEXTURES: dict[str, Callable[[np.random.Generator, int, float], np.ndarray]] = {
    "mottled": _mottled,
    "granular": _granular,
    "fibres": _fibres,
}


def _styles_for(classes: ClassSet) -> list[TissueStyle]:
    """The style of each class, in class order; other datasets' names map onto the same tissues."""
    styles = []
    for c in classes.classes:
        key = STYLE_ALIASES.get(c.name.upper(), c.name.upper())
        if key not in STYLES:
            raise ConstructError(
                f"class {c.name}: no synthetic texture for it (known: {', '.join([*STYLES, *STYLE_ALIASES])})"
            )
        styles.append(STYLES[key])
    return styles


def _render_tissue(
    rng: np.random.Generator, size: int, style: TissueStyle, fibre_angle: float, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """(N, 3) float colours of one tissue class at the pixels (ys, xs) of its region."""
    base = np.asarray(style.base, dtype=np.float32)
    pull = np.asarray(style.texture_color, dtype=np.float32) - base
    texture = TEXTURES[style.texture](rng, size, fibre_angle)[ys, xs]
    colour = base + (style.texture_strength * texture)[:, None].astype(np.float32) * pull
    alpha, shade = _nuclei(rng, size, style.nuclei, fibre_angle, ys, xs)
    chromatin = 1 + CHROMATIN * _value_noise(rng, size, size // 2)[0][ys, xs]
    nucleus = np.asarray(style.nuclei.color, dtype=np.float32) * (shade * chromatin)[:, None]
    return colour * (1 - alpha[:, None]) + nucleus * alpha[:, None]


def make_tile(seed: int, split: str, index: int, size: int = IMAGE_SIZE, classes: ClassSet = BCSS) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic tile and its mask: (HxWx3 uint8 RGB, HxW uint8 mask indices of `classes`).

    Depends only on its arguments, so any tile can be regenerated on its own (tests check labels
    against the mask this way).
    """
    styles = _styles_for(classes)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS.index(split), index])))
    region = _layout(rng, size, len(styles))
    fibre_angle = rng.uniform(0, np.pi)

    image = np.empty((size, size, 3), dtype=np.float32)
    image[...] = BACKGROUND_COLOR
    for pos in np.unique(region):
        if pos < len(styles):
            ys, xs = np.nonzero(region == pos)
            image[ys, xs] = _render_tissue(rng, size, styles[pos], fibre_angle, ys, xs)

    tissue = (region < len(styles))[..., None]
    gain = (1 + rng.uniform(-STAIN_GAIN, STAIN_GAIN, 3)).astype(np.float32)
    shift = rng.uniform(-STAIN_SHIFT, STAIN_SHIFT)
    lighting = 1 + LIGHTING * _value_noise(rng, size, 3)[0][..., None]
    image = np.where(tissue, (image * gain + shift) * lighting, image)
    image += PIXEL_NOISE_SD * rng.standard_normal(image.shape, dtype=np.float32)

    lut = np.array([c.mask_index for c in classes.classes] + [classes.background_index], dtype=np.uint8)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), lut[region]


def _check_config(config: SynthConfig) -> None:
    for field in ("n_train", "n_valid", "n_test"):
        if getattr(config, field) < 0:
            raise ConstructError(f"synthetic dataset: {field} must be >= 0, got {getattr(config, field)}")
    if config.size < 32:
        raise ConstructError(f"synthetic dataset: size must be >= 32 px, got {config.size}")


def make_synthetic_dataset(
    out: Path | str, config: SynthConfig = SynthConfig(), classes: ClassSet = BCSS, progress: bool = True
) -> Path:
    """Write a synthetic dataset to `out` in the BCSS-WSSS layout and return `out`.

    `construct_synth.json` is written last: a folder holding it with the same settings is complete and
    is returned as is; any other non-empty folder is refused rather than mixed with new tiles.
    """
    _check_config(config)
    _styles_for(classes)  # fail on an unsupported class set before writing anything
    out = Path(out)
    marker = out / MARKER_NAME
    meta = {"synthetic": True, "seed": config.seed, "n_train": config.n_train, "n_valid": config.n_valid,
            "n_test": config.n_test, "size": config.size, "classes": classes.name}
    if out.is_dir() and any(out.iterdir()):
        try:
            existing = json.loads(marker.read_text()) if marker.is_file() else None
        except ValueError:
            existing = None
        if existing == meta:
            return out
        if existing is not None:
            raise ConstructError(f"{out}: holds a synthetic dataset with other settings ({existing}); choose a new folder")
        raise ConstructError(f"{out}: folder exists and is not empty; choose a new folder for the synthetic dataset")

    (out / "train").mkdir(parents=True, exist_ok=True)
    for split in ("valid", "test"):
        for sub in ("img", "mask"):
            (out / split / sub).mkdir(parents=True, exist_ok=True)

    counts = {"train": config.n_train, "valid": config.n_valid, "test": config.n_test}
    jobs = [(split, i) for split in SPLITS for i in range(counts[split])]
    for split, i in tqdm(jobs, desc="synthetic tiles", unit="tile", disable=not progress):
        image, mask = make_tile(config.seed, split, i, config.size, classes)
        if split == "train":
            bits = "".join(str(b) for b in labels_from_mask(mask, classes))
            Image.fromarray(image).save(out / "train" / f"synth_train_{i:05d}+0[{bits}].png")
        else:
            name = f"synth_{split}_{i:05d}.png"
            Image.fromarray(image).save(out / split / "img" / name)
            write_mask(out / split / "mask" / name, mask, classes)
    marker.write_text(json.dumps(meta, indent=2) + "\n")
    return out
