"""Tissue detection against slide artefacts: how much of each is taken for tissue, and what they do to the
tissue area of a real slide.

Synthetic: the 8 x 8-cell synthetic slide (`construct.slide.synthetic`, 2 µm/px, 2 mm a side, glass all
round) with one artefact painted over its glass ring: a black or dark grey scanner edge (160 µm), a blue,
green or black pen stroke (80 µm), tinted cover-slip glass (200 µm). Each slide is written as a pyramidal
TIFF and read back as `construct slide` reads it; printed: the share of the artefact's pixels taken for
tissue, and the tissue mask's IoU with the known tissue.

Real: the CMU-1 crop (`tools/fetch_test_slide.py`; skipped if absent) as scanned, and with a 160 µm dark
edge and blue, green and black 60 µm pen strokes drawn on it; printed: both tissue areas and their change.

Also the detector's time on a 3072 px thumbnail (a 100,000 px slide at 0.25 µm/px, seen at 8 µm/px).

    .venv/bin/python benchmarks/tissue.py    # ends with `max_artefact_share: X` (about 1 min)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from _common import base_parser, finish, report, workdir

from construct.slide.reader import open_slide
from construct.slide.synthetic import (
    ARTEFACT_COLORS,
    DEFAULT_LAYOUT,
    artefact_mask,
    layout_regions,
    paint,
    render,
    write_pyramid_tiff,
)
from construct.slide.tissue import TissueMask, detect_tissue, slide_tissue

MPP, CELL = 2.0, 128
WIDTH_UM = {"black-edge": 160, "grey-edge": 160, "tinted-glass": 200}  # the rest (ink): INK_UM
INK_UM = 80
CMU = Path.home() / ".cache" / "construct" / "cmu_small_region.svs"
CMU_INK = (("blue-ink", 0.12, 0.5), ("green-ink", 0.62, 0.3), ("black-ink", 0.4, 0.35))  # (kind, row, reach)


def detect(image: np.ndarray, path: Path, mpp: float) -> TissueMask:
    write_pyramid_tiff(path, image, mpp)
    slide = open_slide(path)
    try:
        return slide_tissue(slide)
    finally:
        slide.close()


def at_mask(level0: np.ndarray, downsample: float) -> np.ndarray:
    step = int(downsample)
    return level0[step // 2::step, step // 2::step]


def synthetic(folder: Path) -> dict:
    regions = layout_regions(DEFAULT_LAYOUT, CELL)
    out = {}
    for kind in ARTEFACT_COLORS:
        image = render(regions)
        where = artefact_mask(kind, regions.shape, round(WIDTH_UM.get(kind, INK_UM) / MPP),
                              where=(0.5 / len(DEFAULT_LAYOUT), 1.0))
        paint(image, where, kind)
        tissue = detect(image, folder / f"{kind}.tif", MPP)
        artefact, truth = at_mask(where, tissue.downsample), at_mask(regions, tissue.downsample) != 4
        share = float((tissue.mask & artefact).sum() / artefact.sum())
        iou = float((tissue.mask & truth).sum() / (tissue.mask | truth).sum())
        report(f"{kind}: share taken for tissue", share)
        report(f"{kind}: tissue IoU with the truth", iou)
        out[kind] = {"artefact_share": share, "tissue_iou": iou}
    return out


def real(folder: Path) -> dict | None:
    if not CMU.is_file():
        print(f"  (real slide absent: {CMU}; run tools/fetch_test_slide.py)")
        return None
    slide = open_slide(CMU)
    w, h = slide.dimensions
    clean, mpp = slide.read(0, 0, w, h, w, h).copy(), slide.mpp
    slide.close()
    dirty = clean.copy()
    paint(dirty, artefact_mask("black-edge", dirty.shape[:2], round(160 / mpp)), "black-edge")
    for seed, (kind, row, reach) in enumerate(CMU_INK):
        paint(dirty, artefact_mask(kind, dirty.shape[:2], round(60 / mpp), where=(row, reach)), kind, seed)
    areas = {}
    for name, image in (("clean", clean), ("edge_and_ink", dirty)):
        tissue = detect(image, folder / f"cmu_{name}.tif", mpp)
        areas[name] = float(tissue.mask.sum() * (tissue.downsample * mpp / 1000) ** 2)
        report(f"CMU crop {name}: tissue", areas[name], "mm2")
    change = areas["edge_and_ink"] / areas["clean"] - 1
    report("CMU crop: change with edge and ink", f"{100 * change:+.1f}%")
    return {"tissue_mm2": areas, "change": change}


def main() -> None:
    args = base_parser("tissue", __doc__.splitlines()[0]).parse_args()
    figures: dict = {}
    with workdir(args.workdir) as folder:
        print("synthetic artefacts over glass:")
        figures["synthetic"] = synthetic(folder)
        print("real slide:")
        figures["real"] = real(folder)
    thumbnail = render(layout_regions(DEFAULT_LAYOUT, 384))
    seconds = []
    for _ in range(3):
        start = time.perf_counter()
        detect_tissue(thumbnail, 8.0, 1.0)
        seconds.append(time.perf_counter() - start)
    figures["seconds_3072px"] = min(seconds)
    report("detector on a 3072 px thumbnail (best of 3)", min(seconds), "s")
    finish("max_artefact_share", max(v["artefact_share"] for v in figures["synthetic"].values()), figures, args)


if __name__ == "__main__":
    main()
