"""`construct slide`: throughput against the same predictor on the same tiles as a folder, and peak
memory against a slide four times the area.

Throughput: a synthetic slide (`construct.slide.synthetic`) is segmented whole by `segment_slides` (tissue
detection, tile reading, the predictor, blending, and writing the mask pyramid, GeoJSON, overlay and
summary), and the same tiles, saved beforehand as PNGs, go through the shared pipeline as a folder
(`folder_source` → the same predictor → `MaskSink`). The predictor is the ConStruct head over full-size
CONCH with random weights (no TTA, fp32), which costs what real weights cost. Arms alternate, `--repeats`
times each; the ratio is of the medians: slide tiles/s over folder tiles/s (1.0: the slide's own work
hides behind inference entirely).

Memory: each of two synthetic slides, one with four times the other's area, is segmented in a fresh
process with a predictor that reads the synthetic colours (so inference costs almost nothing and the
slide machinery's own memory shows), and the process's peak RSS (VmHWM) is read at its end.

    .venv/bin/python benchmarks/slide.py    # ends with `overhead_ratio: X`; also prints rss_ratio
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from _common import base_parser, finish, median, report, workdir
from construct.backbones.registry import create_backbone
from construct.data.classes import BCSS
from construct.data.sources import folder_source
from construct.head.model import ConStructHead, HeadConfig
from construct.inference.head import HeadPredictor
from construct.inference.pipeline import run_inference
from construct.inference.sinks import MaskSink
from construct.inference.tta import variants_for
from construct.runtime import resolve_device
from construct.slide.grid import make_grid
from construct.slide.reader import open_slide
from construct.slide.run import SlideConfig, segment_slides
from construct.slide.source import SlideTileSource
from construct.slide.synthetic import ColourPredictor, make_synthetic_slide
from construct.slide.tissue import detect_tissue, tissue_downsample

TARGET_MPP = 1.0  # the synthetic slides are at 0.5 µm/px: the throughput slide is read at half size


def head_predictor(spec: str, device: torch.device) -> HeadPredictor:
    """The head, untrained (its speed does not depend on its weights), over CONCH built from `spec`."""
    conch = create_backbone("conch", spec, 224)
    text = conch.text_embeddings(BCSS.descriptions).cpu()
    with torch.no_grad():
        width = conch.taps(torch.zeros(1, 3, 224, 224), with_embedding=False)["conch_b12"].shape[-1]
    head = ConStructHead(HeadConfig(n_classes=len(BCSS), width=width, embed_dim=text.shape[1]), text)
    return HeadPredictor(conch, head, BCSS, 224, variants_for(False), "fp32", device)


def dump_tiles(slide_path: Path, folder: Path) -> int:
    """The tiles `segment_slide` will read, as PNGs (the folder arm's input)."""
    slide = open_slide(slide_path)
    grid = make_grid(slide.dimensions, slide.mpp, TARGET_MPP, 224, 56)
    d = tissue_downsample(slide.dimensions, slide.mpp)
    origins = grid.tissue_tiles(detect_tissue(slide.thumbnail(d), d, slide.mpp))
    folder.mkdir(parents=True)
    for batch in SlideTileSource(slide, grid, origins).batches(16):
        for tile in batch:
            Image.fromarray(tile.image).save(folder / f"{tile.stem}.png")
    slide.close()
    return len(origins)


def throughput(args, work: Path) -> dict:
    device = resolve_device(args.device)
    slide = make_synthetic_slide(work / "throughput.tif", cell=args.cell, mpp=0.5).path
    n = dump_tiles(slide, work / "tiles")
    predictor = head_predictor(args.conch, device)
    with torch.no_grad():  # first-call costs (allocations, kernel choice) belong to neither arm
        predictor.scores(torch.rand(args.batch_size, 3, 224, 224, device=device), "pred")
    folder, whole = [], []
    print(f"throughput: {n} tiles, head over CONCH {args.conch} on {device}, batch {args.batch_size}, "
          f"{args.repeats} alternating repeats per arm...")
    for k in range(args.repeats):
        t = time.perf_counter()
        run_inference(folder_source(work / "tiles", BCSS, 224), predictor,
                      [MaskSink(work / f"folder{k}", BCSS, resume=False)], "pred", crf=False,
                      batch_size=args.batch_size, progress=False)
        folder.append(n / (time.perf_counter() - t))
        t = time.perf_counter()
        result = segment_slides([slide], SlideConfig(out=work / f"slide{k}", target_mpp=TARGET_MPP,
                                                     batch_size=args.batch_size), predictor, progress=False)
        whole.append(result.done[0]["tiles"] / (time.perf_counter() - t))
        print(f"  repeat {k}: folder {folder[-1]:.3f} tiles/s, slide {whole[-1]:.3f} tiles/s")
    ratio = median(whole) / median(folder)
    report("tiles", n)
    report("folder (PNG tiles -> predictor -> PNG masks)", median(folder), "tiles/s")
    report("slide (whole command, outputs included)", median(whole), "tiles/s")
    report("overhead ratio (slide / folder)", ratio)
    return {"tiles": n, "folder_tiles_per_s": folder, "slide_tiles_per_s": whole, "overhead_ratio": ratio}


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across execve, so
    a child started by a parent that had just written a big slide would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(slide: Path, out: Path) -> None:
    """In a fresh process: segment `slide` with the colour predictor; print peak RSS and counts as JSON."""
    t = time.perf_counter()
    result = segment_slides([slide], SlideConfig(out=out, target_mpp=0.5, batch_size=16), ColourPredictor(),
                            progress=False)
    summary = result.done[0]
    print(json.dumps({"peak_rss_mb": peak_rss_mb(),
                      "tiles": summary["tiles"], "grid": summary["grid_size"],
                      "seconds": time.perf_counter() - t}))


def memory(args, work: Path) -> dict:
    runs = {}
    for name, cell in (("small", args.rss_cell), ("large", 2 * args.rss_cell)):
        slide = make_synthetic_slide(work / f"{name}.tif", cell=cell, mpp=0.5).path
        proc = subprocess.run([sys.executable, __file__, "--rss-child", str(slide), str(work / f"rss_{name}")],
                              capture_output=True, text=True, check=True)
        runs[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {name}: grid {runs[name]['grid']}, {runs[name]['tiles']} tiles, peak RSS "
              f"{runs[name]['peak_rss_mb']:.0f} MB, {runs[name]['seconds']:.1f} s")
    ratio = runs["large"]["peak_rss_mb"] / runs["small"]["peak_rss_mb"]
    report("peak RSS ratio (4x area / 1x)", ratio)
    return {**runs, "rss_ratio": ratio}


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        rss_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    p = base_parser("slide", __doc__.split("\n\n")[0])
    p.add_argument("--cell", type=int, default=320, help="layout cell of the throughput slide, px (8x8 cells)")
    p.add_argument("--rss-cell", type=int, default=512, help="layout cell of the small memory slide, px")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--part", choices=["both", "memory", "throughput"], default="both")
    args = p.parse_args()
    figures = {}
    with workdir(args.workdir) as work:
        if args.part in ("both", "memory"):
            print("memory:")
            figures["memory"] = memory(args, work)
        if args.part in ("both", "throughput"):
            figures["throughput"] = throughput(args, work)
    if "throughput" in figures:
        finish("overhead_ratio", figures["throughput"]["overhead_ratio"], figures, args)
    else:
        finish("rss_ratio", figures["memory"]["rss_ratio"], figures, args)
    if args.part == "both":
        print(f"rss_ratio: {figures['memory']['rss_ratio']:.3f}")


if __name__ == "__main__":
    main()
