"""The stitched-slide sink: blends tiles' scores into the slide's label image and, at `close()`, writes
mask.ome.tif (and mask_classes.csv, what its values mean), annotations.geojson, overlay.png, tissue.png
and summary.json.

Everything is written in a scratch folder and moved into place as one folder at the end, so the output
folder of a slide either holds all its files or does not exist: a killed slide leaves only scratch,
which the next run removes before starting that slide again.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from construct.data.classes import ClassSet
from construct.data.sources import Tile
from construct.head.scores import mask_index_lut
from construct.slide.defaults import MIN_AREA_UM2, VECTOR_MPP
from construct.slide.grid import Grid, blend_window
from construct.slide.maskvalues import mask_table, mask_value_lut
from construct.slide.outputs import (
    OVERLAY_SIDE,
    overlay,
    pyramid,
    qupath_offset,
    vector_factor,
    write_geojson,
    write_json,
    write_ome_tiff,
)
from construct.slide.phases import Phases
from construct.slide.reader import Slide
from construct.slide.stitch import Stitcher
from construct.slide.tissue import TissueMask, tissue_preview

UNCLASSIFIED = "unclassified"  # tissue no class claimed (the background channel won inside the tissue mask)


class StitchedSlideSink:
    def __init__(self, out_dir: Path, work_dir: Path, slide: Slide, grid: Grid, tissue: TissueMask,
                 origins: list[tuple[int, int]], classes: ClassSet, target_mpp: float, meta: dict,
                 mask_values: str = "dataset", vector_mpp: float = VECTOR_MPP, min_area_um2: float = MIN_AREA_UM2,
                 phases: Phases | None = None):
        self.out_dir, self.work_dir = Path(out_dir), Path(work_dir)
        self.slide, self.grid, self.tissue, self.classes = slide, grid, tissue, classes
        self.target_mpp = target_mpp
        self.meta = meta
        self.mask_values = mask_values
        self.vector_factor = vector_factor(vector_mpp, target_mpp)
        self.vector_mpp = self.vector_factor * target_mpp  # what the GeoJSON is traced at
        self.qupath_offset = qupath_offset(slide.handle.properties)
        self.min_area_um2 = min_area_um2
        self.phases = phases or Phases()
        self.polygons: dict[str, int] = {}
        self.n_tiles = len(origins)
        self.window = blend_window(grid.tile, grid.overlap)
        self.lut = mask_index_lut(classes)
        self.counts = np.zeros(256, np.int64)  # grid pixels per mask index, inside tissue
        self.tissue_px = 0
        self.written: dict | None = None  # the summary, once close() has moved the outputs into place
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.stitcher = Stitcher(self.work_dir, len(classes) + 1, grid.height, grid.width, grid.tile, origins,
                                 self._finish_block, fill=classes.background_index)

    def done(self, stem: str) -> bool:
        # Open blocks are in memory only, so a killed slide restarts whole: no tile is ever done before.
        return False

    def write(self, tile: Tile, scores: np.ndarray, labels: np.ndarray) -> None:
        x, y = tile.origin
        with self.phases.time("stitch"):
            self.stitcher.add(x, y, scores * self.window)

    def _tissue_block(self, r0: int, c0: int, h: int, w: int) -> np.ndarray:
        """Tissue mask at the grid pixels of a block (nearest: each grid pixel's centre)."""
        f = self.grid.scale / self.tissue.downsample
        mh, mw = self.tissue.mask.shape
        rows = np.minimum(((np.arange(r0, r0 + h) + 0.5) * f).astype(np.int64), mh - 1)
        cols = np.minimum(((np.arange(c0, c0 + w) + 0.5) * f).astype(np.int64), mw - 1)
        return self.tissue.mask[np.ix_(rows, cols)]

    def _finish_block(self, origin: tuple[int, int], acc: np.ndarray) -> np.ndarray:
        labels = self.lut[acc.argmax(axis=0)]
        inside = self._tissue_block(*origin, *labels.shape)
        labels[~inside] = self.classes.background_index  # glass is never a tissue class
        self.counts += np.bincount(labels[inside], minlength=256)
        self.tissue_px += int(inside.sum())
        return labels

    def summary(self) -> dict:
        px_mm2 = (self.target_mpp / 1000.0) ** 2
        tissue_mm2 = self.tissue_px * px_mm2

        def share(n: int) -> dict:
            return {"area_mm2": round(n * px_mm2, 6),
                    "percent_tissue": round(100.0 * n / self.tissue_px, 4) if self.tissue_px else 0.0}

        classes = {c.name: share(int(self.counts[c.mask_index])) for c in self.classes.classes}
        background = int(self.counts[self.classes.background_index])
        w0, h0 = self.slide.dimensions
        return {
            "slide": str(self.slide.path), "mpp": self.target_mpp, "slide_mpp": self.slide.mpp,
            "slide_mpp_source": self.slide.mpp_source, "slide_size": [w0, h0],
            "grid_size": [self.grid.width, self.grid.height], "tile_size": self.grid.tile,
            "overlap": self.grid.overlap, "tiles": self.n_tiles, "tissue_threshold": self.tissue.threshold,
            "tissue_mm2": round(tissue_mm2, 6), "classes": classes,
            "background_in_tissue_mm2": round(background * px_mm2, 6),
            UNCLASSIFIED: share(background),  # with the classes, 100% of the tissue
            "mask_values": self.mask_values, "warnings": list(self.slide.warnings),
            "vector": {"mpp": self.vector_mpp, "min_area_um2": self.min_area_um2,
                       "qupath_offset": list(self.qupath_offset),
                       "polygons": self.polygons},
            "seconds": round(self.phases.elapsed(), 3), "seconds_by_phase": self.phases.record(), **self.meta,
        }

    def _overlay_thumbnail(self) -> np.ndarray:
        """The slide at the overlay's size: shrunk from the image tissue was found on when that is large
        enough (a slide without a pyramid is not read from level 0 a second time), else read."""
        w0, h0 = self.slide.dimensions
        downsample = max(1.0, max(w0, h0) / OVERLAY_SIDE)
        size = (max(1, math.ceil(w0 / downsample)), max(1, math.ceil(h0 / downsample)))
        kept = self.tissue.image
        if kept is not None and kept.shape[1] >= size[0] and kept.shape[0] >= size[1]:
            return np.asarray(Image.fromarray(kept).resize(size, Image.Resampling.BOX))
        return self.slide.thumbnail(downsample)

    def close(self) -> None:
        """Write every output into scratch, then move the folder into place; `written` is the summary."""
        with self.phases.time("stitch"):
            self.stitcher.close()
        staging = self.work_dir / "out"
        staging.mkdir()
        labels = self.stitcher.labels
        name = self.out_dir.name
        values = mask_value_lut(self.classes, self.mask_values)
        with self.phases.time("write"):
            levels = pyramid(labels, self.work_dir)
            write_ome_tiff(staging / "mask.ome.tif", levels, self.target_mpp, name, values)
            (staging / "mask_classes.csv").write_text(mask_table(self.classes, values), encoding="utf-8")
        with self.phases.time("vector"):
            self.polygons = write_geojson(staging / "annotations.geojson", labels, self.classes, self.grid.scale,
                                          self.vector_factor, self.qupath_offset,
                                          self.min_area_um2 / self.vector_mpp ** 2, self.work_dir / "vector")
        with self.phases.time("write"):
            tissue_preview(self.tissue).save(staging / "tissue.png")
            summary = self.summary()
            percents = {k: v["percent_tissue"] for k, v in summary["classes"].items()}
            percents[UNCLASSIFIED] = summary[UNCLASSIFIED]["percent_tissue"]
            thumb = self._overlay_thumbnail()
            # Fast deflate: a noisy 1024 px thumbnail at the default level costs a second, for 10% less size.
            overlay(thumb, np.asarray(levels[-1][:]), self.classes, percents).save(staging / "overlay.png",
                                                                                   compress_level=1)
        summary["seconds"] = round(self.phases.elapsed(), 3)
        summary["seconds_by_phase"] = self.phases.record()
        write_json(staging / "summary.json", summary)
        os.replace(staging, self.out_dir)
        self.written = summary
