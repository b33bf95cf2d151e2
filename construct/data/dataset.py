"""Listing and reading BCSS-WSSS-style tile datasets.

The layout (docs/design.md section 6): `train/*.png` (or `train/img/*.png`) with the image-level labels in a
bracket at the end of each file name, and `valid/` (or `val/`) and `test/`, each with `img/` and `mask/`
holding files of identical names. Every reading error becomes a one-line `ConstructError` that starts
with the offending path, so a bad tile among thousands is found at once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from construct.atomic import atomic_output
from construct.data import SPLITS
from construct.data.classes import ClassSet
from construct.errors import ConstructError

IMAGE_SIZE = 224
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# Folder names tried for each split, in order of preference.
_SPLIT_FOLDERS = {"train": ("train",), "valid": ("valid", "val"), "test": ("test",)}
# The label bracket at the end of a stem, optionally followed by an image extension:
# "...+0[1101]" (BCSS-WSSS) or "...-[1 0 1 0]" (LUAD-HistoSeg).
_LABEL_BRACKET = re.compile(r"\[([^\[\]]*)\]\s*(?:\.(?:png|jpe?g|tiff?))?$", re.IGNORECASE)
# Errors PIL raises for files that are not images, are truncated or are corrupt.
_PIL_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One tile of a split; `labels` is None until derived from the mask (valid/test)."""

    image_id: str
    image_path: Path
    labels: np.ndarray | None
    mask_path: Path | None


def split_dir(root: Path, split: str) -> Path:
    """The folder that holds a split's images, accepting the layouts different tools write."""
    root = Path(root)
    key = "valid" if split == "val" else split
    if key not in _SPLIT_FOLDERS:
        raise ConstructError(f"{root}: unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    for name in _SPLIT_FOLDERS[key]:
        folder = root / name
        if not folder.is_dir():
            continue
        if key == "train":
            return folder / "img" if (folder / "img").is_dir() else folder
        if not (folder / "img").is_dir():
            raise ConstructError(f"{folder}: no img/ folder (valid/test need img/ and mask/)")
        return folder / "img"
    tried = " or ".join(f"{name}/" for name in _SPLIT_FOLDERS[key])
    raise ConstructError(f"{root}: no {key} split folder (looked for {tried})")


def parse_labels(name: str, n_classes: int) -> np.ndarray:
    """Image-level labels from the bracket ending a file name, the only supervision in training."""
    match = _LABEL_BRACKET.search(name)
    if match is None:
        raise ConstructError(f"{name}: no label bracket like [0101] in the file name")
    digits = re.sub(r"\s+", "", match.group(1))
    if not digits or set(digits) - {"0", "1"}:
        raise ConstructError(f"{name}: label bracket [{match.group(1)}] must hold only 0s and 1s")
    if len(digits) != n_classes:
        raise ConstructError(
            f"{name}: label bracket [{match.group(1)}] has {len(digits)} labels, expected {n_classes}"
        )
    return np.array([int(d) for d in digits], dtype=np.uint8)


def _image_files(folder: Path) -> list[Path]:
    """Image files in a folder sorted by name, skipping hidden files (e.g. macOS `._x.png`)."""
    files = [
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    ]
    if not files:
        raise ConstructError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return sorted(files, key=lambda p: p.name)


def list_split(root: Path | str, split: str, classes: ClassSet) -> list[Sample]:
    """All samples of a split, sorted by file name; checks the layout without decoding any image."""
    img_dir = split_dir(Path(root), split)
    files = _image_files(img_dir)
    if split == "train":
        return [Sample(p.stem, p, parse_labels(p.name, len(classes)), None) for p in files]
    mask_dir = img_dir.parent / "mask"
    if not mask_dir.is_dir():
        raise ConstructError(f"{mask_dir}: mask folder missing (valid/test need img/ and mask/)")
    mask_names = {p.name for p in mask_dir.iterdir()}
    samples = []
    for p in files:
        # Identical names; a .jpg tile may still have a .png mask.
        mask_name = next((n for n in (p.name, p.stem + ".png") if n in mask_names), None)
        if mask_name is None:
            raise ConstructError(f"{p}: no mask with the same name in {mask_dir}")
        samples.append(Sample(p.stem, p, None, mask_dir / mask_name))
    return samples


def _open_loaded(path: Path, what: str) -> Image.Image:
    """Open and fully decode a file, so truncation shows up here rather than mid-training."""
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()  # the loaded pixels outlive the closed file
    except FileNotFoundError as e:
        raise ConstructError(f"{path}: {what} file not found") from e
    except _PIL_ERRORS as e:
        raise ConstructError(f"{path}: unreadable or truncated {what} ({e})") from e


def read_image(path: Path, size: int | None = IMAGE_SIZE) -> np.ndarray:
    """An HxWx3 uint8 RGB tile; `size=None` accepts any size (e.g. for whole-slide crops)."""
    im = _open_loaded(Path(path), "image")
    if im.mode != "RGB":
        raise ConstructError(f"{path}: image mode must be RGB, found {im.mode}")
    width, height = im.size
    if size is not None and (width, height) != (size, size):
        raise ConstructError(f"{path}: expected {size}x{size} pixels, found {width}x{height} (width x height)")
    return np.array(im, dtype=np.uint8)


def read_mask(path: Path, classes: ClassSet, shape: tuple[int, int] | None = None) -> np.ndarray:
    """An HxW uint8 mask of class indices, checked against the class set and the image shape."""
    im = _open_loaded(Path(path), "mask")
    if im.mode not in ("P", "L"):
        raise ConstructError(f"{path}: mask must be a palette (P) or grayscale (L) PNG of class indices, found {im.mode}")
    mask = np.array(im, dtype=np.uint8)
    if shape is not None and mask.shape != tuple(shape):
        raise ConstructError(
            f"{path}: mask is {mask.shape[0]}x{mask.shape[1]} but the image is {shape[0]}x{shape[1]} (height x width)"
        )
    bad = np.unique(mask[mask >= classes.n_mask_values])
    if bad.size:
        raise ConstructError(
            f"{path}: mask values must be 0..{classes.n_mask_values - 1}, found {', '.join(map(str, bad.tolist()))}"
        )
    return mask


def write_mask(path: Path, mask: np.ndarray, classes: ClassSet) -> None:
    """Save a mask as a palette PNG; atomic, so an interrupted run never leaves a half-written mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (HxW), got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() >= classes.n_mask_values):
        raise ValueError(f"mask values must be 0..{classes.n_mask_values - 1}, got {mask.min()}..{mask.max()}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = mask.shape
    im = Image.frombytes("P", (width, height), np.ascontiguousarray(mask, dtype=np.uint8).tobytes())
    im.putpalette(classes.palette())
    with atomic_output(path) as tmp:
        im.save(tmp, format="PNG")


def labels_from_mask(mask: np.ndarray, classes: ClassSet) -> np.ndarray:
    """(C,) uint8 presence labels of a ground-truth mask, the valid/test analogue of the name bracket."""
    counts = np.bincount(np.asarray(mask, dtype=np.uint8).ravel(), minlength=classes.n_mask_values)
    return np.array([counts[c.mask_index] > 0 for c in classes.classes], dtype=np.uint8)
