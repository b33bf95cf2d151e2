"""The files of a segmented slide: pyramidal OME-TIFF mask, QuPath GeoJSON, overlay, summary.

All read the label image from its Zarr array block by block, so none holds the slide in memory.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import zarr
from PIL import Image, ImageDraw

from construct.data.classes import ClassSet
from construct.slide.vectorize import polygons, trace

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


def vector_factor(vector_mpp: float, model_mpp: float) -> int:
    """Label pixels per traced pixel side: `vector_mpp` rounded to a whole multiple of the model's
    resolution, never finer than it."""
    return max(1, round(vector_mpp / model_mpp))


def qupath_offset(properties) -> tuple[float, float]:
    """Level-0 px that QuPath's frame starts at: OpenSlide's bounds (MRXS and other slides with a scanned
    area smaller than the image; QuPath crops to them), else the image's corner."""
    return (float(properties.get("openslide.bounds-x") or 0), float(properties.get("openslide.bounds-y") or 0))


def _polygon_json(poly) -> str:
    """A polygon's GeoJSON coordinates, compact: exterior then holes, integer level-0 px."""
    rings = [poly.exterior, *poly.interiors]
    return json.dumps([np.rint(np.asarray(r.coords)).astype(np.int64).tolist() for r in rings],
                      separators=(",", ":"))


def write_geojson(path: Path, labels: zarr.Array, classes: ClassSet, scale: float, factor: int,
                  offset: tuple[float, float], min_area_px: float, scratch: Path) -> dict[str, int]:
    """annotations.geojson: a QuPath FeatureCollection with one annotation per class present, whose
    (Multi)Polygon holds that class's regions in level-0 px of the slide, in QuPath's frame (`offset`
    subtracted). `scale` is level-0 px per label px, `factor` label px per traced px, `min_area_px` in traced
    px². Each region is written to its class's part file in `scratch` as soon as it is traced; the parts
    are then copied into the file in turn, so neither the file nor the slide's geometry is ever held whole.
    Returns the number of polygons per class name."""
    import shapely
    from shapely import affinity

    scratch.mkdir(parents=True, exist_ok=True)
    by_index = {c.mask_index: c for c in classes.classes}
    parts = {i: (scratch / f"class{i}.part").open("w", encoding="utf-8") for i in by_index}
    counts = dict.fromkeys(by_index, 0)
    k = factor * scale

    def emit(value: int, poly) -> None:
        poly = affinity.affine_transform(poly, [k, 0, 0, k, -offset[0], -offset[1]])
        for p in polygons(shapely.set_precision(poly, 1.0)):  # whole level-0 px; stays valid
            parts[value].write(("," if counts[value] else "") + _polygon_json(p))
            counts[value] += 1

    try:
        trace(labels, list(by_index), factor, min_area_px, emit)
    finally:
        for f in parts.values():
            f.close()
    with path.open("w", encoding="utf-8") as out:
        out.write('{"type":"FeatureCollection","features":[')
        first = True
        for c in classes.classes:
            n = counts[c.mask_index]
            if not n:
                continue
            kind, opening, closing = ("Polygon", "", "") if n == 1 else ("MultiPolygon", "[", "]")
            out.write(("" if first else ",") + f'{{"type":"Feature","geometry":{{"type":"{kind}","coordinates":{opening}')
            with (scratch / f"class{c.mask_index}.part").open(encoding="utf-8") as part:
                shutil.copyfileobj(part, out)
            props = {"objectType": "annotation", "name": c.full_name,
                     "classification": {"name": c.full_name, "color": list(c.color)}, "construct_class": c.name}
            out.write(f"{closing}}},\"properties\":{json.dumps(props, separators=(',', ':'))}}}")
            first = False
        out.write("]}\n")
    return {by_index[i].name: n for i, n in counts.items()}


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
