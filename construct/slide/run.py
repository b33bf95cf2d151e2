"""`construct slide`: segment whole slides with a trained run, one output folder per slide.

Per slide: open (OpenSlide), find tissue on a low-resolution image, lay the tiling grid at the run's
resolution, stream tissue tiles through the predictor into the stitched-slide sink, which writes the
outputs at the end. A finished slide (its folder has summary.json) is skipped; scratch of a killed slide
is removed and the slide starts again. A slide that fails gets one line and the batch goes on.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from construct.atomic import write_text_atomic
from construct.data.loader import images_to_tensor
from construct.distributed import World
from construct.errors import ConstructError
from construct.inference.parts import Predictor
from construct.inference.pipeline import run_inference
from construct.slide.defaults import MIN_AREA_UM2, VECTOR_MPP
from construct.slide.grid import make_grid
from construct.slide.maskvalues import MASK_VALUES
from construct.slide.memory import pin_mmap_threshold
from construct.slide.phases import Phases, TimedPredictor
from construct.slide.reader import MPP_RANGE, Slide, open_slide
from construct.slide.sink import UNCLASSIFIED, StitchedSlideSink
from construct.slide.source import SlideTileSource
from construct.slide.tissue import slide_tissue
from construct.stain.methods import DEFAULT_METHOD as DEFAULT_STAIN_NORM
from construct.stain.predictor import with_stain_norm
from construct.stain.runs import BATCH as STAIN_BATCH
from construct.stain.runs import fit_input, spread

SLIDE_EXTENSIONS = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".svslide", ".bif")
WORK_DIR = ".work"  # scratch of slides in progress, under --out
SUMMARY_CSV = "summary.csv"
GATE = "pred"  # a slide has no labels: the model's own classifier gates each tile
UPSAMPLE_TOLERANCE = 0.2  # a slide coarser than the model by more than this is upsampled: warned, or refused


@dataclass
class SlideConfig:
    out: Path
    target_mpp: float  # the model's µm/px
    slide_mpp: float | None = None  # overrides every slide's metadata
    overlap: int | None = None  # grid px; default a quarter tile
    tissue_threshold: float | None = None  # saturation; default Otsu (clamped)
    batch_size: int = 16
    pred_threshold: float = 0.5
    no_upsample: bool = False  # refuse slides coarser than the model instead of upsampling them
    mask_values: str = "dataset"  # one of maskvalues.MASK_VALUES
    vector_mpp: float = VECTOR_MPP  # µm/px the GeoJSON is traced at (never finer than target_mpp)
    min_area_um2: float = MIN_AREA_UM2  # GeoJSON regions and holes smaller than this are dropped
    meta: dict = field(default_factory=dict)  # recorded in every summary.json (model, settings)
    stain_norm: str = DEFAULT_STAIN_NORM  # each slide normalised to the run's stain reference (construct.stain)
    run: Path | None = None  # the run folder the reference is read from (None: no normalisation)


@dataclass
class BatchResult:
    done: list[dict] = field(default_factory=list)  # summaries of slides segmented now
    skipped: list[Path] = field(default_factory=list)  # finished before
    no_tissue: list[Path] = field(default_factory=list)  # segmented now or before, with no tissue found
    failed: list[tuple[Path, str]] = field(default_factory=list)


def check_config(cfg: SlideConfig, tile: int) -> None:
    """Flag mistakes once, before any slide (not as the same failure on every slide)."""
    for flag, value in (("--mpp", cfg.target_mpp), ("--slide-mpp", cfg.slide_mpp)):
        if value is not None and not value > 0:
            raise ConstructError(f"{flag} {value}: expected micrometres per pixel, above 0")
    lo, hi = MPP_RANGE
    if cfg.slide_mpp is not None and not lo <= cfg.slide_mpp <= hi:
        raise ConstructError(f"--slide-mpp {cfg.slide_mpp}: expected {lo:g} to {hi:g} µm/px (a 40x scan is about "
                             f"0.25, a 20x one 0.5)")
    if cfg.mask_values not in MASK_VALUES:
        raise ConstructError(f"--mask-values {cfg.mask_values}: expected one of {', '.join(MASK_VALUES)}")
    if cfg.overlap is not None and not 0 <= cfg.overlap < tile:
        raise ConstructError(f"--overlap {cfg.overlap}: expected 0 to {tile - 1} px (the model's tile is {tile} px)")
    if cfg.tissue_threshold is not None and not 0.0 <= cfg.tissue_threshold <= 1.0:
        raise ConstructError(f"--tissue-threshold {cfg.tissue_threshold}: expected a saturation in [0, 1]")
    if not 0.0 <= cfg.pred_threshold <= 1.0:
        raise ConstructError(f"--pred-threshold {cfg.pred_threshold}: expected a probability in [0, 1]")
    if cfg.batch_size < 1:
        raise ConstructError("--batch-size must be at least 1")
    if not cfg.vector_mpp > 0:
        raise ConstructError(f"--vector-mpp {cfg.vector_mpp}: expected micrometres per pixel, above 0")
    if not cfg.min_area_um2 >= 0:
        raise ConstructError(f"--min-area-um2 {cfg.min_area_um2}: expected an area in µm², 0 or more")


def list_slides(inputs: list[Path]) -> list[Path]:
    """Slide files, folders of them (by extension, sorted) and CSV manifests (a `path` column, relative
    paths against the CSV's folder), in the order given."""
    slides: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            slides.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS))
        elif item.suffix.lower() == ".csv":
            try:
                rows = list(csv.DictReader(io.StringIO(item.read_text(encoding="utf-8"))))
            except (OSError, UnicodeDecodeError, csv.Error) as e:
                raise ConstructError(f"{item}: unreadable manifest ({e})") from e
            if not rows or "path" not in rows[0]:
                raise ConstructError(f"{item}: a manifest needs a `path` column and at least one row")
            slides.extend(p if p.is_absolute() else item.parent / p for p in (Path(r["path"]) for r in rows))
        else:
            slides.append(item)
    if not slides:
        raise ConstructError(f"no slides in {', '.join(map(str, inputs))}")
    return slides


def is_finished(folder: Path) -> bool:
    return (folder / "summary.json").is_file()


def check_upsampling(slide: Slide, target_mpp: float, refuse: bool) -> None:
    """A slide coarser than the model is upsampled (more tiles, blurred inputs): warned, or refused."""
    factor = slide.mpp / target_mpp
    if factor > 1 + UPSAMPLE_TOLERANCE:
        note = (f"{slide.path}: the slide's {slide.mpp:g} µm/px ({slide.mpp_source}) is coarser than the model's "
                f"{target_mpp:g} µm/px; tiles would be upsampled {factor:.2g}x per side")
        if refuse:
            raise ConstructError(f"{note} (refused: --no-upsample)")
        slide.warnings.append(f"{note} (--no-upsample refuses)")


def segment_slide(path: Path, cfg: SlideConfig, predictor: Predictor, progress: bool = True,
                  echo: Callable[[str], None] = print) -> dict:
    """Segment one slide into `cfg.out/<stem>/`; returns its summary (tiles 0: no tissue found). Doubts
    about its resolution are echoed as warnings and kept in the summary."""
    out_dir = cfg.out / path.stem
    if out_dir.exists():
        raise ConstructError(f"{out_dir}: exists but is not a finished slide output; remove it")
    work = cfg.out / WORK_DIR / path.stem
    shutil.rmtree(work, ignore_errors=True)  # a killed run's scratch: start the slide again cleanly
    slide = None
    phases = Phases()
    try:
        slide = open_slide(path, cfg.slide_mpp)
        check_upsampling(slide, cfg.target_mpp, cfg.no_upsample)
        for warning in slide.warnings:
            echo(f"warning: {warning}")
        tile = predictor.tile_size
        overlap = tile // 4 if cfg.overlap is None else cfg.overlap
        grid = make_grid(slide.dimensions, slide.mpp, cfg.target_mpp, tile, overlap)
        with phases.time("tissue"):
            tissue = slide_tissue(slide, cfg.tissue_threshold)
            origins = grid.tissue_tiles(tissue)
        with phases.time("stain"):
            normalizer, stain = _fit_stain(cfg, slide, grid, origins, path.stem)
        sink = StitchedSlideSink(out_dir, work, slide, grid, tissue, origins, predictor.classes, cfg.target_mpp,
                                 {**cfg.meta, "gate": GATE, "stain": stain}, cfg.mask_values, cfg.vector_mpp,
                                 cfg.min_area_um2, phases)
        # Argmax, not the CRF: blending overlapping tiles' soft scores is what decides a slide's labels.
        run_inference(SlideTileSource(slide, grid, origins, phases),
                      TimedPredictor(with_stain_norm(predictor, normalizer), phases), [sink], GATE, crf=False,
                      batch_size=cfg.batch_size, pred_threshold=cfg.pred_threshold, progress=progress,
                      desc=path.stem)
        summary = sink.written
    finally:
        if slide is not None:
            slide.close()
        shutil.rmtree(work, ignore_errors=True)  # done, or failed: nothing half written stays
    return summary


def _fit_stain(cfg: SlideConfig, slide, grid, origins: list[tuple[int, int]], name: str):
    """One stain estimate per slide, from a spread sample of its tissue tiles."""
    batches = (images_to_tensor(torch.from_numpy(np.stack([t.image for t in tiles])), torch.device("cpu"))
               for tiles in SlideTileSource(slide, grid, spread(origins)).batches(STAIN_BATCH))
    return fit_input(cfg.stain_norm, cfg.run, batches, f"slide {name}")


def write_summary_csv(out: Path) -> None:
    """OUT/summary.csv: one row per finished slide (read back from each summary.json)."""
    rows = []
    for s in sorted(p for p in out.glob("*/summary.json") if p.parent.name != WORK_DIR):
        d = json.loads(s.read_text())
        row = {"slide": d["slide"], "folder": s.parent.name, "mpp": d["mpp"], "tiles": d["tiles"],
               "tissue_mm2": d["tissue_mm2"]}
        for name, c in d["classes"].items():
            row[f"{name}_mm2"], row[f"{name}_percent_tissue"] = c["area_mm2"], c["percent_tissue"]
        if UNCLASSIFIED in d:  # summaries written before it was recorded have none
            row[f"{UNCLASSIFIED}_mm2"] = d[UNCLASSIFIED]["area_mm2"]
            row[f"{UNCLASSIFIED}_percent_tissue"] = d[UNCLASSIFIED]["percent_tissue"]
        row["seconds"] = d["seconds"]
        rows.append(row)
    if not rows:
        return
    buf = io.StringIO()
    columns = dict.fromkeys(k for row in rows for k in row)  # summaries written before `unclassified` lack it
    writer = csv.DictWriter(buf, fieldnames=list(columns))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / SUMMARY_CSV, buf.getvalue())


def segment_slides(slides: list[Path], cfg: SlideConfig, predictor: Predictor, progress: bool = True,
                   echo: Callable[[str], None] = print, world: World = World()) -> BatchResult:
    """Every slide in turn; failures are collected (one line each, echoed as they happen), not raised.

    Under torchrun the slides are dealt out to the processes in turn (slide i to rank i mod world size):
    each slide has one writer. Every rank returns the whole batch's result; rank 0 alone writes
    summary.csv."""
    check_config(cfg, predictor.tile_size)
    pin_mmap_threshold()  # memory stays flat over thousands of tiles
    result = BatchResult()
    seen: dict[str, Path] = {}
    cfg.out.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(map(Path, slides)):
        try:
            if path.stem in seen:  # checked on every rank alike, so each reports its own slides only
                if i % world.world_size == world.rank:
                    raise ConstructError(f"{path}: same name as {seen[path.stem]}; outputs are named by it, "
                                         f"rename one")
                continue
            seen[path.stem] = path
            if i % world.world_size != world.rank:
                continue
            folder = cfg.out / path.stem
            finished = is_finished(folder)
            if finished:
                summary = json.loads((folder / "summary.json").read_text())
            else:
                summary = segment_slide(path, cfg, predictor, progress, echo)
                if world.is_main:
                    write_summary_csv(cfg.out)
            if summary["tiles"] == 0:
                result.no_tissue.append(path)
                if not finished:  # reported once; a rerun skips the finished slide like any other
                    raise ConstructError(f"{path}: no tissue found (saturation threshold "
                                         f"{summary['tissue_threshold']:.3f}; --tissue-threshold lowers it); wrote "
                                         f"an empty mask and a zero table")
            if finished:
                result.skipped.append(path)
            else:
                result.done.append(summary)
        except ConstructError as e:
            result.failed.append((path, str(e)))
            echo(f"slide failed: {e}")
    if world.spread:
        result = gather_results(result, world)  # a barrier: no rank is still working in .work/ after it
        if world.is_main:
            write_summary_csv(cfg.out)
    if world.is_main:
        remove_if_empty(cfg.out / WORK_DIR)
    return result


def remove_if_empty(folder: Path) -> None:
    """Remove an empty scratch folder; one holding a killed slide's scratch stays, for the next run."""
    with contextlib.suppress(OSError):  # absent, or not empty
        folder.rmdir()


def gather_results(mine: BatchResult, world: World) -> BatchResult:
    """Every rank's results, merged, on every rank (also a barrier: all slides are done after it)."""
    import torch.distributed as dist

    parts: list[BatchResult | None] = [None] * world.world_size
    dist.all_gather_object(parts, mine)
    merged = BatchResult()
    for part in parts:
        merged.done += part.done
        merged.skipped += part.skipped
        merged.failed += part.failed
        merged.no_tissue += part.no_tissue
    return merged
