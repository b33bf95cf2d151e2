"""annotations.geojson from label maps alone: time, peak memory and file size, before and after tracing
at a coarse resolution.

Label maps (Zarr, 256 px chunks, as `construct slide` stitches them) of 4096² and 8192² px: `smooth` (five
classes as large blobs: argmax of smooth random fields) and `speckle` (the same with 0.5% of the pixels set
to a random class, as a noisy model leaves them). Each is taken as a 0.25 µm/px (40x) model's output and
vectorised in a fresh process (peak RSS is the process's VmHWM, less the imports):

- `before`: the vectoriser of commit --before-rev (loaded from git): traced at the model's resolution,
  every block merged into one geometry per class, the whole file built in memory and indented;
- `after`: `construct.slide.outputs.write_geojson` at the default --vector-mpp (2 µm/px: 8x8 label px per
  traced px, by majority vote), streamed to disk;
- `after_full`: the same at the model's resolution (--vector-mpp 0.25), to show the tracer alone.

    .venv/bin/python benchmarks/geojson.py     # ends with `speedup: X` (before/after, 4096² speckle)
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from _common import base_parser, finish, report, workdir
from _memory import peak_rss_mb
from scipy import ndimage

from construct.data.classes import BCSS
from construct.slide.defaults import MIN_AREA_UM2, VECTOR_MPP
from construct.slide.outputs import vector_factor, write_geojson

MODEL_MPP = 0.25
SPECKLE = 0.005
BLOB_PX = 64  # label px per cell of the random fields the blobs come from
REPO = Path(__file__).resolve().parents[1]


def label_map(path: Path, side: int, speckle: bool, seed: int = 0) -> None:
    """A side x side label map of the five BCSS values (4 = background), written to a Zarr array."""
    rng = np.random.default_rng(seed)
    n = len(BCSS) + 1
    small = ndimage.gaussian_filter(rng.standard_normal((n, side // BLOB_PX, side // BLOB_PX)), (0, 1.5, 1.5))
    best = np.full((side, side), -np.inf, np.float32)
    labels = np.zeros((side, side), np.uint8)
    for v in range(n):  # one upsampled field at a time: memory stays at two float32 maps
        field = ndimage.zoom(small[v].astype(np.float32), BLOB_PX, order=1)[:side, :side]
        better = field > best
        best[better], labels[better] = field[better], v
    if speckle:
        hit = rng.random((side, side)) < SPECKLE
        labels[hit] = rng.integers(0, n, hit.sum(), dtype=np.uint8)
    arr = zarr.create_array(store=str(path), shape=labels.shape, chunks=(256, 256), dtype="uint8")
    arr[:] = labels


def old_vectorize(rev: str):
    """construct/slide/vectorize.py as it was at `rev`."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:construct/slide/vectorize.py"],
                            capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "old_vectorize.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_vectorize", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def before(labels: zarr.Array, out: Path, rev: str) -> None:
    """The old path: one merged geometry per class at full resolution, the whole file built in memory."""
    import shapely

    geoms = old_vectorize(rev).class_geometries(labels, [c.mask_index for c in BCSS.classes])
    features = [{"type": "Feature", "geometry": shapely.geometry.mapping(geoms[c.mask_index]),
                 "properties": {"objectType": "annotation", "name": c.full_name,
                                "classification": {"name": c.full_name, "color": list(c.color)}}}
                for c in BCSS.classes if not geoms[c.mask_index].is_empty]
    out.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=2) + "\n")


def after(labels: zarr.Array, out: Path, vector_mpp: float) -> None:
    factor = vector_factor(vector_mpp, MODEL_MPP)
    write_geojson(out, labels, BCSS, 1.0, factor, (0.0, 0.0), MIN_AREA_UM2 / (factor * MODEL_MPP) ** 2,
                  out.parent / f"{out.stem}.parts")


def child(arm: str, labels_path: Path, out: Path, rev: str) -> None:
    rss0 = peak_rss_mb()
    labels = zarr.open_array(str(labels_path), mode="r")
    t = time.perf_counter()
    if arm == "before":
        before(labels, out, rev)
    else:
        after(labels, out, VECTOR_MPP if arm == "after" else MODEL_MPP)
    seconds = time.perf_counter() - t
    fc = json.loads(out.read_text())
    vertices = sum(len(ring) for f in fc["features"] for poly in
                   ([f["geometry"]["coordinates"]] if f["geometry"]["type"] == "Polygon" else f["geometry"]["coordinates"])
                   for ring in poly)
    print(json.dumps({"seconds": seconds, "mb": out.stat().st_size / 1e6, "vertices": vertices,
                      "peak_rss_mb": peak_rss_mb() - rss0}))


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5])
        return
    p = base_parser("geojson", __doc__.split("\n\n")[0])
    p.add_argument("--sides", default="4096,8192", help="label map sides, px")
    p.add_argument("--arms", default="before,after,after_full")
    p.add_argument("--before-rev", default="4dfb3eb", help="the commit whose vectoriser is `before`")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per arm before it is recorded as not finished")
    args = p.parse_args()
    figures: dict = {}
    with workdir(args.workdir) as work:
        for side in map(int, args.sides.split(",")):
            for kind in ("smooth", "speckle"):
                name = f"{kind}_{side}"
                labels = work / f"{name}.zarr"
                if not labels.exists():
                    label_map(labels, side, kind == "speckle")
                for arm in args.arms.split(","):
                    cmd = [sys.executable, __file__, "--child", arm, str(labels), str(work / f"{name}_{arm}.geojson"),
                           args.before_rev]
                    try:
                        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=args.timeout)
                        fig = json.loads(proc.stdout.strip().splitlines()[-1])
                    except subprocess.TimeoutExpired:
                        fig = {"seconds": None, "note": f"not finished in {args.timeout:.0f} s"}
                    figures.setdefault(name, {})[arm] = fig
                    if fig["seconds"] is None:
                        report(f"{name} {arm}", fig["note"])
                    else:
                        report(f"{name} {arm}", f"{fig['seconds']:.2f} s, {fig['mb']:.2f} MB, {fig['vertices']} "
                                                f"vertices, peak RSS +{fig['peak_rss_mb']:.0f} MB")
    key = "speckle_4096"
    arms = figures.get(key, {})
    if arms.get("before", {}).get("seconds") and arms.get("after", {}).get("seconds"):
        finish("speedup", arms["before"]["seconds"] / arms["after"]["seconds"], figures, args, digits=1)
    else:
        finish("speedup", "n/a", figures, args)


if __name__ == "__main__":
    main()
