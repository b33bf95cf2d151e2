"""The ablation table: each variant's metrics beside the paper's Table 3 rows, as text, Markdown or HTML.

Reads what `construct ablate` writes (`ablation.json`: variant name → metrics, the keys of
`construct eval --json`, or `mIoU` (+ `mDice`, `IoU`) of the validation store without test data).
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from construct.errors import ConstructError

ABLATION_FILE = "ablation.json"
# The ConStruct paper's Table 3 (BCSS-WSSS test, %): the full method and the method without structural
# distillation. Per-class IoU and mDice of the full row are its Table 2 row.
PAPER_TABLE3 = (
    ("paper: full", {"mIoU": 70.96, "mDice": 82.83, "IoU": {"TUM": 81.59, "STR": 67.99, "LYM": 62.70, "NEC": 71.56}}),
    ("paper: no-distill", {"mIoU": 70.40, "mDice": None, "IoU": {}}),
)
MISSING = "-"


def read_ablation(folder: Path) -> dict[str, dict]:
    path = Path(folder) / ABLATION_FILE
    if not path.is_file():
        raise ConstructError(f"{folder}: no {ABLATION_FILE} (run `construct ablate --out {folder}` first)")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ConstructError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not all(isinstance(v, dict) and "mIoU" in v for v in data.values()):
        raise ConstructError(f"{path}: expected an object of variant name → metrics with mIoU")
    return data


def ablation_rows(results: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: the paper's Table 3 rows, then each variant (mIoU, mDice, per-class IoU)."""
    classes = list(next((m["IoU"] for m in results.values() if m.get("IoU")), {}))
    header = ["Variant", "mIoU", "mDice", *(f"IoU {c}" for c in classes)]
    rows = []
    for name, m in [*PAPER_TABLE3, *results.items()]:
        iou = m.get("IoU") or {}
        rows.append([name, _fmt(m.get("mIoU")), _fmt(m.get("mDice")), *(_fmt(iou.get(c)) for c in classes)])
    return header, rows


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def format_ablation(results: dict[str, dict]) -> str:
    header, rows = ablation_rows(results)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([line(header), "-" * len(line(header)), *map(line, rows)])


def markdown_ablation(results: dict[str, dict]) -> str:
    header, rows = ablation_rows(results)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def ablation_html(results: dict[str, dict]) -> str:
    header, rows = ablation_rows(results)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr" + (' class="baseline"' if r[0].startswith("paper:") else "") + ">"
                   + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return (f"<h2>Ablation</h2><table><tr>{head}</tr>{body}</table><p>Each variant trained from one store with "
            f"the same seed and schedule; the paper's rows are its Table 3 (BCSS-WSSS test).</p>")
