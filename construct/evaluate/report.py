"""One self-contained HTML report: table, confusion matrix, per-class bars, example tiles, prototype gallery.

Every picture is a PNG embedded as a base64 data URI, so the file can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import io
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from construct.data.classes import ClassSet
from construct.data.dataset import read_image, read_mask
from construct.evaluate.ablation import ablation_html
from construct.evaluate.collect import Collected, prediction_path
from construct.evaluate.draw import confusion_image, mask_labels, overlay, readable_ink, score_bars, thumbnail
from construct.evaluate.gallery import GalleryEntry
from construct.evaluate.table import table_rows
from construct.metrics import apply_protocol, scores

TILES_PER_GROUP = 3
THUMB_SIZE = 112
GROUPS = ("best", "median", "worst")

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
tr.ours td { font-weight: bold; background: #fff6d5; }
tr.baseline td { color: #666; font-style: italic; }
.warning { background: #fde2e2; border: 2px solid #c0392b; padding: 0.6em 1em; font-weight: bold; }
.legend span { display: inline-block; padding: 0.1em 0.6em; margin-right: 0.4em; border: 1px solid #999; }
figure { display: inline-block; margin: 0.3em; text-align: center; font-size: 0.8em; }
table.tiles td { text-align: center; vertical-align: middle; }
"""


@dataclass(frozen=True)
class TileView:
    """One example tile for the report: the image and both masks, with its per-image mIoU."""

    image_id: str
    miou: float
    image: np.ndarray
    gt: np.ndarray
    pred: np.ndarray


def png_data_uri(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(img: Image.Image, alt: str) -> str:
    return f'<img src="{png_data_uri(img)}" alt="{html.escape(alt)}">'


def per_image_miou(collected: Collected, protocol: str, classes: ClassSet) -> np.ndarray:
    """Each image's own mIoU under the protocol; NaN where it has no tissue in ground truth or prediction."""
    return np.array([scores(apply_protocol(c, protocol, classes.background_index), classes).miou
                     for c in collected.confusions])


def pick_tiles(values: np.ndarray, per_group: int = TILES_PER_GROUP) -> dict[str, list[int]]:
    """Indices of the best, median and worst images by score, never the same image twice.

    Images whose score is undefined (NaN) are not ranked.
    """
    ranked = [int(i) for i in np.argsort(-values, kind="stable") if not math.isnan(values[i])]
    best = ranked[:per_group]
    worst = ranked[max(len(best), len(ranked) - per_group):]
    middle = ranked[len(best): len(ranked) - len(worst)]
    start = max(0, len(middle) // 2 - per_group // 2)
    return {"best": best, "median": middle[start: start + per_group], "worst": worst}


def example_tiles(
    collected: Collected, pred_dir: Path, classes: ClassSet, protocol: str, per_group: int = TILES_PER_GROUP
) -> dict[str, list[TileView]]:
    """Read back the picked tiles (a handful, so re-reading beats keeping every mask in memory)."""
    values = per_image_miou(collected, protocol, classes)
    groups: dict[str, list[TileView]] = {}
    for group, indices in pick_tiles(values, per_group).items():
        views = []
        for i in indices:
            sample = collected.samples[i]
            gt = read_mask(sample.mask_path, classes)
            pred = read_mask(prediction_path(pred_dir, sample), classes, shape=gt.shape)
            views.append(TileView(sample.image_id, float(values[i]), read_image(sample.image_path, size=None), gt, pred))
        groups[group] = views
    return groups


def _table_html(result: dict) -> str:
    header, rows, notes, n_published = table_rows(result)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    n_ours = 2 if result.get("student") else 1  # the run, and the student distilled from it
    kinds = {**{k: " class=ours" for k in range(n_published, n_published + n_ours)},
             **{k: " class=baseline" for k in range(n_published + n_ours, len(rows))}}
    body = "".join(
        f"<tr{kinds.get(k, '')}>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
        for k, r in enumerate(rows)
    )
    items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"<table><tr>{head}</tr>{body}</table><ul>{items}</ul>"


def _stain_html(stain: dict | None) -> str:
    """The run's stain reference beside the input's estimate, and what refine did about it."""
    if not stain:
        return "<p>Not recorded (predictions made before stain normalisation).</p>"
    from construct.stain.reference import StainReference
    from construct.stain.swatch import swatch

    cells = []
    for label, key in (("run's reference", "reference"), ("input", "input")):
        ref = stain.get(key)
        shown = _img(swatch(StainReference.from_dict(ref)), label) if ref else "not estimated"
        cells.append(f"<tr><td>{html.escape(label)}</td><td>{shown}</td></tr>")
    distance = stain.get("distance") or {}
    facts = [f"normalisation asked: {stain.get('requested')}, applied: {stain.get('applied')}"]
    if distance:
        facts.append("distance: " + ", ".join(f"{k} {v}" for k, v in distance.items()))
    if stain.get("warning"):
        facts.append(f"warning: {stain['warning']}")
    items = "".join(f"<li>{html.escape(f)}</li>" for f in facts)
    return (f"<table>{''.join(cells)}</table><ul>{items}</ul><p>Swatches: hematoxylin at 25/50/100% of its "
            f"99th-percentile concentration, eosin likewise, both at half, the tissue's mean colour.</p>")


def _legend(classes: ClassSet) -> str:
    labels = mask_labels(classes)
    colors = {c.mask_index: c.color for c in classes.classes}
    colors[classes.background_index] = classes.background_color
    spans = "".join(
        f'<span style="background: rgb{tuple(colors[i])}; color: rgb{readable_ink(tuple(colors[i]))}">'
        f"{html.escape(labels[i])}</span>"
        for i in sorted(colors)
    )
    return f'<p class="legend">{spans} (background left untinted in overlays)</p>'


def _tiles_html(groups: dict[str, list[TileView]], classes: ClassSet) -> str:
    if not any(groups.values()):
        return "<p>No tile has tissue in its ground truth or prediction, so none could be ranked.</p>"
    parts = [_legend(classes)]
    for group in GROUPS:
        views = groups.get(group, [])
        if not views:
            continue
        rows = "".join(
            f"<tr><td>{html.escape(v.image_id)}<br>mIoU {v.miou:.1f}%</td>"
            f"<td>{_img(Image.fromarray(v.image), v.image_id + ' image')}</td>"
            f"<td>{_img(overlay(v.image, v.gt, classes), v.image_id + ' ground truth')}</td>"
            f"<td>{_img(overlay(v.image, v.pred, classes), v.image_id + ' prediction')}</td></tr>"
            for v in views
        )
        parts.append(
            f"<h3>{group.capitalize()}</h3><table class=tiles>"
            f"<tr><th>tile</th><th>image</th><th>ground truth</th><th>prediction</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _gallery_html(gallery: list[GalleryEntry] | None, source: str) -> str:
    if gallery is None:
        return "<p>Not built: pass the training feature store (--features STORE) to see it.</p>"
    parts = [f"<p>For each class prototype ({html.escape(source)}), the training tiles whose CONCH image "
             "embeddings are most cosine-similar to it, nearest first.</p>"]
    for entry in gallery:
        figures = "".join(
            f"<figure>{_img(thumbnail(read_image(path, size=None), THUMB_SIZE), image_id)}"
            f"<figcaption>{html.escape(image_id)}<br>cos {sim:.3f}</figcaption></figure>"
            for image_id, path, sim in zip(entry.image_ids, entry.image_paths, entry.similarities)
        )
        parts.append(f"<h3>{html.escape(entry.class_name)}</h3><div>{figures}</div>")
    return "".join(parts)


def render_report(
    result: dict,
    classes: ClassSet,
    tiles: dict[str, list[TileView]],
    gallery: list[GalleryEntry] | None = None,
    gallery_source: str = "CONCH text embeddings of the class descriptions",
    ablation: dict[str, dict] | None = None,
) -> str:
    """The whole report as one HTML string; `gallery_source` says which prototypes the gallery used;
    `ablation` (what `construct ablate` wrote) adds its table."""
    title = f"construct eval: {result['split']} split, {result['protocol']} protocol"
    warnings = [w for w, on in (("randomly initialised backbones", result.get("random_weights")),
                                ("synthetic data", result.get("synthetic"))) if on]
    banner = (f'<p class="warning">This run used {" and ".join(warnings)}: '
              "its numbers say nothing about the method.</p>") if warnings else ""
    conf = np.asarray(result["confusion"])
    names = list(result["classes"])
    colors = [c.color for c in classes.classes]
    bars = score_bars(names, [_nan(result["IoU"][n]) for n in names], [_nan(result["Dice"][n]) for n in names], colors)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
{banner}
<h2>Comparison with the paper (Table 2 layout)</h2>
{_table_html(result)}
{ablation_html(ablation) if ablation else ""}
<h2>Confusion matrix</h2>
<figure>{_img(confusion_image(conf, mask_labels(classes)), "confusion matrix")}
<figcaption>Rows: ground truth; columns: prediction. Shade and % by row; pixel counts below.</figcaption></figure>
<h2>Per-class IoU and Dice (%)</h2>
<figure>{_img(bars, "per-class IoU and Dice")}
<figcaption>Upper bar IoU, lower (lighter) bar Dice.</figcaption></figure>
<h2>Example tiles (per-image mIoU: best, median, worst)</h2>
{_tiles_html(tiles, classes)}
<h2>Stain</h2>
{_stain_html(result.get("stain"))}
<h2>Prototype gallery</h2>
{_gallery_html(gallery, gallery_source)}
</body></html>
"""


def _nan(value: float | None) -> float:
    """JSON null (undefined) back to NaN for drawing."""
    return float("nan") if value is None else value
