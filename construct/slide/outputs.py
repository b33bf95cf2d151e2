"""The files of a segmented slide: pyramidal OME-TIFF mask, QuPath GeoJSON, overlay, summary.

All read the label image from its Zarr array block by block, so none holds the slide in memory.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw

from construct.data.classes import ClassSet
from construct.slide.vectorize import class_geometries

OME_TILE = 256
PYRAMID_MIN_SIDE = 512  # halve until the longest side is at most this
OVERLAY_SIDE = 1024
OVERLAY_ALPHA = 0.45


def pyramid(level0: zarr.Array, folder: Path) -> list[zarr.Array]:
    """Level 0 and its halvings (nearest: labels must stay labels), each a Zarr array in `folder`."""
    levels = [level0]
    while max(levels[-1].shape) > PYRAMID_MIN_SIDE:
        prev = levels[-1]
        h, w = math.ceil(prev.shape[0] / 2), math.ceil(prev.shape[1] / 2)
        nxt = zarr.create_array(store=str(folder / f"level{len(levels)}.zarr"), shape=(h, w),
                                chunks=(OME_TILE, OME_TILE), dtype="uint8", fill_value=prev.fill_value)
        step = 4 * OME_TILE  # source rows/cols per block
        for r in range(0, prev.shape[0], step):
            for c in range(0, prev.shape[1], step):
                part = np.asarray(prev[r:r + step, c:c + step])[::2, ::2]
                nxt[r // 2:r // 2 + part.shape[0], c // 2:c // 2 + part.shape[1]] = part
        levels.append(nxt)
    return levels


def _tiles(arr: zarr.Array, values: np.ndarray):
    """Full-size tiles in row-major order (edge tiles padded), as tifffile's tile iterator wants, with
    each label mapped through `values`."""
    for r in range(0, arr.shape[0], OME_TILE):
        for c in range(0, arr.shape[1], OME_TILE):
            t = values[np.asarray(arr[r:r + OME_TILE, c:c + OME_TILE])]
            if t.shape != (OME_TILE, OME_TILE):
                t = np.pad(t, ((0, OME_TILE - t.shape[0]), (0, OME_TILE - t.shape[1])))
            yield t


def write_ome_tiff(path: Path, levels: list[zarr.Array], mpp: float, name: str, values: np.ndarray | None = None) -> None:
    """A tiled, deflate-compressed, pyramidal (SubIFDs) OME-TIFF with the physical pixel size; `values`
    (256,) maps each label to the value written (default: as is)."""
    import tifffile

    if values is None:
        values = np.arange(256, dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for k, arr in enumerate(levels):
            size = mpp * 2 ** k
            per_cm = 1e4 / size
            meta = ({"axes": "YX", "Name": name, "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                     "PhysicalSizeXUnit": "µm", "PhysicalSizeYUnit": "µm"} if k == 0 else None)
            tif.write(_tiles(arr, values), shape=arr.shape, dtype="uint8", tile=(OME_TILE, OME_TILE),
                      compression="zlib", photometric="minisblack", resolution=(per_cm, per_cm),
                      resolutionunit="CENTIMETER", subifds=len(levels) - 1 if k == 0 else None,
                      subfiletype=1 if k else 0, metadata=meta)


def geojson(labels: zarr.Array, classes: ClassSet, scale: float) -> dict:
    """QuPath FeatureCollection: one annotation per class present, in level-0 pixel coordinates."""
    import shapely
    from shapely import affinity

    geoms = class_geometries(labels, [c.mask_index for c in classes.classes])
    features = []
    for c in classes.classes:
        geom = geoms[c.mask_index]
        if geom.is_empty:
            continue
        geom = affinity.scale(geom, xfact=scale, yfact=scale, origin=(0, 0))
        features.append({
            "type": "Feature",
            "geometry": shapely.geometry.mapping(geom),
            "properties": {"objectType": "annotation", "name": c.full_name,
                           "classification": {"name": c.full_name, "color": list(c.color)},
                           "construct_class": c.name},
        })
    return {"type": "FeatureCollection", "features": features}


def overlay(thumbnail: np.ndarray, labels_small: np.ndarray, classes: ClassSet, percents: dict[str, float]) -> Image.Image:
    """The slide thumbnail with the tissue classes blended over it, and a legend strip below: each class's
    share of the tissue, then any other share in `percents` (unclassified tissue: left untinted)."""
    h, w = thumbnail.shape[:2]
    lab = np.asarray(Image.fromarray(labels_small).resize((w, h), Image.Resampling.NEAREST))
    colors = np.zeros((256, 3), np.float32)
    tint = np.zeros(256, np.float32)
    for c in classes.classes:
        colors[c.mask_index] = c.color
        tint[c.mask_index] = OVERLAY_ALPHA
    a = tint[lab][..., None]
    blended = thumbnail.astype(np.float32) * (1 - a) + colors[lab] * a
    legend_h = 24
    canvas = Image.new("RGB", (w, h + legend_h), (255, 255, 255))
    canvas.paste(Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8)), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x = 4
    swatches = [(c.name, tuple(c.color)) for c in classes.classes]
    swatches += [(name, (255, 255, 255)) for name in percents if name not in classes.names]
    for label, color in swatches:
        draw.rectangle([x, h + 6, x + 12, h + 18], fill=color, outline=(0, 0, 0))
        text = f"{label} {percents.get(label, 0.0):.1f}%"
        draw.text((x + 16, h + 6), text, fill=(0, 0, 0))
        x += 16 + int(draw.textlength(text)) + 12
    return canvas


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
