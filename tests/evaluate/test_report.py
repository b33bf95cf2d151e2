"""The HTML report parses, is self-contained, and every picture is a decodable PNG."""

from __future__ import annotations

import base64
import io
import json
import shutil
from html.parser import HTMLParser

import numpy as np
from PIL import Image

from construct.data.classes import BCSS
from construct.data.dataset import list_split, write_mask
from construct.evaluate import evaluate_predictions
from construct.evaluate.collect import collect
from construct.evaluate.gallery import prototype_gallery
from construct.evaluate.report import example_tiles, pick_tiles, render_report
from construct.evaluate.run import STUDENT_KEYS, build_result
from construct.evaluate.table import PAPER_TABLE2

PNG_URI = "data:image/png;base64,"


class Page(HTMLParser):
    """Collects what the tests look at: image sources, section titles, table cell text."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[str] = []
        self.headings: list[str] = []
        self.cells: list[str] = []
        self.legend: dict[str, str] = {}  # label -> its span's style
        self._style = ""
        self._capture: list[str] | None = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "h2":
            self._capture = self.headings
        elif tag == "td":
            self._capture = self.cells
        elif tag == "span":
            self._style = dict(attrs).get("style", "")

    def handle_endtag(self, tag):
        if tag in ("h2", "td"):
            self._capture = None

    def handle_data(self, data):
        if self._style:
            self.legend[data.strip()] = self._style
            self._style = ""
        if self._capture is not None:
            self._capture.append(data.strip())


def decode_png(src: str) -> Image.Image:
    assert src.startswith(PNG_URI)
    im = Image.open(io.BytesIO(base64.b64decode(src[len(PNG_URI):], validate=True)))
    assert im.format == "PNG"
    im.load()
    return im


def test_report_from_evaluate_predictions(three_tiles, tmp_path):
    data, preds = three_tiles
    (preds / "refine.json").write_text('{"random_weights": true, "backbones": {}}')
    out = tmp_path / "report" / "eval.html"
    evaluate_predictions(preds, data, "test", report_path=out, progress=False)
    text = out.read_text()
    page = Page(text)
    # confusion matrix, bars, and image / ground truth / prediction for each of the three tiles
    assert len(page.images) == 2 + 3 * 3
    for src in page.images:
        decode_png(src)
    assert any("Confusion" in h for h in page.headings) and any("gallery" in h for h in page.headings)
    assert {p.method for p in PAPER_TABLE2} <= set(page.cells)
    assert "ours (random backbones)" in page.cells
    assert "randomly initialised backbones" in text
    assert "http" not in text  # self-contained: nothing fetched from elsewhere


def test_report_with_prototype_gallery(three_tiles, tmp_path, make_store):
    data, preds = three_tiles
    rng = np.random.default_rng(0)
    (tmp_path / "train").mkdir()
    paths = [tmp_path / "train" / f"t{i}.png" for i in range(6)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(path)
    store = make_store(rng.standard_normal((6, 16)).astype(np.float32),
                       text=rng.standard_normal((len(BCSS), 16)).astype(np.float32), paths=paths)
    gallery = prototype_gallery(store, k=2)
    collected = collect(preds, list_split(data, "test", BCSS), BCSS, progress=False)
    result = build_result(collected, BCSS, "bcss", "test")
    html = render_report(result, BCSS, example_tiles(collected, preds, BCSS, "bcss"), gallery)
    page = Page(html)
    assert len(page.images) == 2 + 3 * 3 + len(BCSS) * 2
    sizes = [decode_png(src).size for src in page.images]
    assert sizes[-1] == (112, 112)  # gallery thumbnails


def test_legend_text_reads_on_each_class_colour(three_tiles, tmp_path):
    data, preds = three_tiles
    out = tmp_path / "eval.html"
    evaluate_predictions(preds, data, "test", report_path=out, progress=False)
    legend = Page(out.read_text()).legend
    white, black = "color: rgb(255, 255, 255)", "color: rgb(0, 0, 0)"
    # BCSS colours: red, blue and violet are dark (white text); green and the background are light
    assert {name: white in legend[name] for name in ("TUM", "STR", "LYM", "NEC")} == {
        "TUM": True, "STR": False, "LYM": True, "NEC": True}
    assert black in legend["BG"] and black in legend["STR"]


def test_pick_tiles_best_median_worst_without_repeats():
    picks = pick_tiles(np.arange(10, dtype=float), per_group=3)
    assert picks == {"best": [9, 8, 7], "median": [5, 4, 3], "worst": [2, 1, 0]}


def test_pick_tiles_skips_undefined_and_small_sets():
    picks = pick_tiles(np.array([np.nan, 50.0, 20.0, np.nan]), per_group=3)
    assert picks == {"best": [1, 2], "median": [], "worst": []}
    assert pick_tiles(np.array([np.nan]), per_group=3) == {"best": [], "median": [], "worst": []}


def test_report_when_no_tile_can_be_ranked(dataset, tmp_path):
    bg = np.full((4, 4), BCSS.background_index)
    data, preds = dataset({"a": bg}, {"a": bg})
    out = tmp_path / "r.html"
    evaluate_predictions(preds, data, "test", report_path=out, progress=False)
    page = Page(out.read_text())
    assert len(page.images) == 2
    assert "none could be ranked" in out.read_text()


def test_cli_student_pred_scores_the_student_beside_ours(three_tiles, tmp_path):
    """`eval --student-pred`: the student's masks scored on the same split, in the JSON, the terminal table
    and the report (styled as ours, not as a baseline)."""
    from click.testing import CliRunner

    from construct.cli import main

    data, preds = three_tiles
    student = tmp_path / "student-preds"
    shutil.copytree(preds, student)
    write_mask(student / "b.png", np.array([[2, 2, 3, 3]] * 4, dtype=np.uint8), BCSS)  # the student gets b right
    out = tmp_path / "eval"
    res = CliRunner().invoke(main, ["eval", "--pred", str(preds), "--student-pred", str(student), "--data",
                                    str(data), "--json", str(out / "m.json"), "--report", str(out / "r.html"),
                                    "--quiet"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "m.json").read_text())
    alone = evaluate_predictions(student, data, "test", progress=False)
    assert saved["student"] == {k: alone[k] for k in STUDENT_KEYS}
    assert saved["student"]["IoU"]["NEC"] == 100 and saved["IoU"]["NEC"] == 0
    assert "ours, distilled student" in res.output
    row = next(line for line in res.output.splitlines() if line.startswith("ours, distilled student"))
    assert f"{saved['student']['mIoU']:.2f}" in row
    text = (out / "r.html").read_text()
    assert text.count("<tr class=ours>") == 2
