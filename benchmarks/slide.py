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

Real size (`--part realsize`): a generated slide of 100 mm² (`_real_size.py`: the CMU crop's H&E texture
on glass, pen strokes, a dark scanner edge; 20,000² px at 0.5 µm/px, pyramidal) and a sibling with 16x
less area, each segmented in a fresh process by one student (the tests' tiny student, trained here in a
minute: its speed is a real student's, its masks are not) at 0.5 µm/px on the CPU. Arm `after`: this
code with `--tile-size` 1024; arm `before` (with --before-code, a copy of an older commit): that code as
it was, 224 px tiles. Prints `mm2_per_s` (tissue mm² per second of the whole slide, big slide, `after`),
`cost_ratio` (seconds per slide px, big over small), `rss_ratio` (peak RSS, big over small) and
`vector_share` (vector + write seconds over the total, big slide).

    .venv/bin/python benchmarks/slide.py    # ends with `overhead_ratio: X`; also prints rss_ratio
    .venv/bin/python benchmarks/slide.py --part realsize --workdir W [--before-code DIR]
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from _common import base_parser, finish, median, report, workdir
from _memory import peak_rss_mb
from PIL import Image

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
from construct.slide.tissue import slide_tissue

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
    origins = grid.tissue_tiles(slide_tissue(slide))
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


REAL_MPP = 0.5  # the real-size slides' resolution, and the student's there
REAL_SIDE = 20000  # px: 100 mm² at 0.5 µm/px
REAL_TILE = 1024


def real_child(slide: Path, run: Path, out: Path, tile_size: int | None) -> None:
    """In a fresh process: segment `slide` with the student run; print figures as JSON. Runs against
    either this code or an older copy (PYTHONPATH), so it uses only what both have, and times the GeoJSON
    where the older code has no phases."""
    from construct.slide import sink

    try:
        from construct.inference.factory import load_predictor as load_model
    except ImportError:  # the older code
        from construct.slide.model import load_model

    timed = {"vector": 0.0}
    if hasattr(sink, "geojson"):  # the older code: one function builds it, write_json writes it
        build, write = sink.geojson, sink.write_json

        def geojson(*a, **k):
            t = time.perf_counter()
            try:
                return build(*a, **k)
            finally:
                timed["vector"] += time.perf_counter() - t

        def write_json(path, data):
            t = time.perf_counter()
            write(path, data)
            if path.name == "annotations.geojson":
                timed["vector"] += time.perf_counter() - t

        sink.geojson, sink.write_json = geojson, write_json
    model = load_model(run, device="cpu") if tile_size is None else load_model(run, device="cpu", tile_size=tile_size)
    overlap = getattr(model, "default_overlap", None)
    t = time.perf_counter()
    batch = 16 if tile_size is None else 2  # the CLI default for 224 px tiles; about as many pixels per forward
    settings = {"out": out, "target_mpp": REAL_MPP, "batch_size": batch, "overlap": overlap}
    if "run" in SlideConfig.__dataclass_fields__:  # as `construct slide` runs it: stain normalised to the run's
        settings["run"] = run
    result = segment_slides([slide], SlideConfig(**settings), model.predictor, progress=False)
    seconds = time.perf_counter() - t
    if result.failed:
        raise SystemExit(f"{slide}: {result.failed[0][1]}")
    summary = result.done[0]
    phases = summary.get("seconds_by_phase") or {"vector": timed["vector"]}
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "tiles": summary["tiles"],
                      "tile_size": summary["tile_size"], "tissue_mm2": summary["tissue_mm2"],
                      "slide_px": summary["slide_size"][0] * summary["slide_size"][1],
                      "geojson_mb": (out / slide.stem / "annotations.geojson").stat().st_size / 1e6,
                      "seconds_by_phase": phases}))


def tiny_student(work: Path) -> Path:
    """The tests' tiny student (a head run on random-tiny features, then 2 quick epochs of distillation)."""
    run = work / "student" / "run"
    if (run / "config.json").is_file() or any(run.glob("*.json")):
        return run
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from construct.distill.trainer import distill
    from tiny_runs import make_tiny_run, quick_config

    teacher = make_tiny_run(work / "teacher")
    distill(quick_config(teacher, run), conch=teacher.conch, progress=False)
    return run


def realsize(args, work: Path) -> dict:
    import os

    from _real_size import make_big_slide

    run = tiny_student(work)
    slides = {}
    for name, side in (("small", args.real_side // 4), ("big", args.real_side)):
        path = work / f"real_{name}.tif"
        if not path.exists():
            t = time.perf_counter()
            make_big_slide(path, side, REAL_MPP)
            print(f"  wrote {path.name}: {side}² px, {(side * REAL_MPP / 1000) ** 2:.2f} mm², "
                  f"{time.perf_counter() - t:.0f} s")
        slides[name] = path
    arms = [("after", Path(__file__).resolve().parents[1], args.real_tile)]
    if args.before_code:
        arms.insert(0, ("before", args.before_code.resolve(), None))
    figures: dict = {}
    for arm, code, tile in arms:
        for name in ("small", "big"):
            out = work / f"real_{arm}_{name}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [sys.executable, __file__, "--real-child", str(slides[name]), str(run), str(out), str(tile or 0)]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(Path(__file__).resolve().parent)])}
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.real_timeout, check=False)
            if proc.returncode:
                raise RuntimeError(f"{arm} {name} failed: {proc.stderr[-2000:]}")
            fig = figures.setdefault(arm, {})[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"  {arm} {name}: {fig['seconds']:.1f} s, {fig['tiles']} tiles of {fig['tile_size']} px, "
                  f"tissue {fig['tissue_mm2']:.2f} mm², peak RSS {fig['peak_rss_mb']:.0f} MB, GeoJSON "
                  f"{fig['geojson_mb']:.2f} MB, phases {fig['seconds_by_phase']}")
        big, small = figures[arm]["big"], figures[arm]["small"]
        ph = big["seconds_by_phase"]
        figures[arm]["ratios"] = {
            "mm2_per_s": big["tissue_mm2"] / big["seconds"],
            "cost_ratio": (big["seconds"] / big["slide_px"]) / (small["seconds"] / small["slide_px"]),
            "rss_ratio": big["peak_rss_mb"] / small["peak_rss_mb"],
            "vector_share": (ph.get("vector", 0.0) + ph.get("write", 0.0)) / big["seconds"],
        }
        print(f"  {arm}: " + ", ".join(f"{k} {v:.3f}" for k, v in figures[arm]["ratios"].items()))
    return figures


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--rss-child":
        rss_child(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    if len(sys.argv) == 6 and sys.argv[1] == "--real-child":
        real_child(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]) or None)
        return
    p = base_parser("slide", __doc__.split("\n\n")[0])
    p.add_argument("--cell", type=int, default=320, help="layout cell of the throughput slide, px (8x8 cells)")
    p.add_argument("--rss-cell", type=int, default=512, help="layout cell of the small memory slide, px")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--part", choices=["both", "memory", "throughput", "realsize"], default="both")
    p.add_argument("--real-side", type=int, default=REAL_SIDE, help="side of the real-size slide, px at 0.5 µm/px")
    p.add_argument("--real-tile", type=int, default=REAL_TILE, help="--tile-size of the `after` arm")
    p.add_argument("--before-code", type=Path, default=None,
                   help="a copy of an older commit's tree (git archive): adds the `before` arm")
    p.add_argument("--real-timeout", type=float, default=3600, help="seconds per real-size run")
    args = p.parse_args()
    figures = {}
    with workdir(args.workdir) as work:
        if args.part == "realsize":
            print("real size:")
            figures["realsize"] = realsize(args, work)
            ratios = figures["realsize"]["after"]["ratios"]
            for key in ("cost_ratio", "rss_ratio", "vector_share"):
                print(f"{key}: {ratios[key]:.3f}")
            finish("mm2_per_s", ratios["mm2_per_s"], figures, args)
            return
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
