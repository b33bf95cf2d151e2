"""The paper's Table 2 (BCSS-WSSS test) with our result beneath it, as text or as rows for HTML."""

from __future__ import annotations

from dataclasses import dataclass

# What the published numbers were measured on; our row is only comparable under the same conditions.
PAPER_DATASET = "BCSS-WSSS"
PAPER_SPLIT = "test"
PAPER_PROTOCOL = "bcss"
PAPER_CLASSES = ("TUM", "STR", "LYM", "NEC")

MISSING_VALUE = "-"
DECIMALS = 2
# How many file names a table note lists; the JSON has them all.
NAMES_IN_NOTE = 5


@dataclass(frozen=True)
class PublishedRow:
    method: str
    miou: float | None
    mdice: float | None
    iou: dict[str, float | None]  # per class, keyed by PAPER_CLASSES; None where not published


def _unknown_iou() -> dict[str, float | None]:
    return dict.fromkeys(PAPER_CLASSES)


# BCSS-WSSS test, percent, as quoted in the ConStruct paper. None: not known to us; never filled in.
PAPER_TABLE2: tuple[PublishedRow, ...] = (
    PublishedRow("TPRO", 65.54, 78.93, _unknown_iou()),
    PublishedRow("MLPS", 61.58, 75.95, _unknown_iou()),
    PublishedRow("Proto2Seg", 57.42, 72.24, _unknown_iou()),
    PublishedRow("PBIP", 69.42, 81.84, _unknown_iou()),
    PublishedRow("ConStruct (paper)", 70.96, 82.83, {"TUM": 81.59, "STR": 67.99, "LYM": 62.70, "NEC": 71.56}),
)


def _fmt(value: float | None) -> str:
    return MISSING_VALUE if value is None else f"{value:.{DECIMALS}f}"


def our_label(result: dict) -> str:
    """'ours', with what makes the numbers meaningless for the method spelled out in the name."""
    caveats = []
    if result.get("random_weights"):
        caveats.append("random backbones")
    if result.get("synthetic"):
        caveats.append("synthetic data")
    return f"ours ({', '.join(caveats)})" if caveats else "ours"


def table_rows(result: dict) -> tuple[list[str], list[list[str]], list[str], int]:
    """(header, rows, notes, n_published): published rows when they apply to these classes, then ours,
    then the trivial baselines when the result holds them."""
    names = list(result["classes"])
    header = ["Method", *(f"IoU {n}" for n in names), "mIoU", "mDice", "FwIoU", "Acc"]
    rows: list[list[str]] = []
    notes: list[str] = []
    if tuple(names) == PAPER_CLASSES:
        for p in PAPER_TABLE2:
            rows.append([p.method, *(_fmt(p.iou[n]) for n in names), _fmt(p.miou), _fmt(p.mdice),
                         MISSING_VALUE, MISSING_VALUE])
        notes.append(f"Published rows: {PAPER_DATASET} {PAPER_SPLIT} split, {PAPER_PROTOCOL} protocol "
                     f"(background pixels included), as quoted in the ConStruct paper.")
        if (result["split"], result["protocol"]) != (PAPER_SPLIT, PAPER_PROTOCOL):
            notes.append(f"NOT COMPARABLE: ours is the {result['split']} split under the "
                         f"{result['protocol']} protocol.")
    else:
        notes.append(f"Published rows omitted: they are for {PAPER_DATASET} classes {', '.join(PAPER_CLASSES)}.")
    n_published = len(rows)
    rows.append(_measured_row(our_label(result), result, names))
    if result.get("student"):  # stage 2 (`construct distill`) on the same split, beside the run it learned from
        rows.append(_measured_row(our_label(result).replace("ours", "ours, distilled student", 1),
                                  result["student"], names))
    for name, b in (result.get("baselines") or {}).items():
        rows.append(_measured_row(f"baseline: {name}", b, names))
    if result.get("baselines"):
        notes.append("Baselines, same split and protocol: all-background predicts background everywhere; "
                     "labelled-everywhere spreads each tile's ground-truth labels evenly over the whole tile.")
    if result.get("random_weights"):
        notes.append("WARNING: predictions came from randomly initialised backbones; "
                     "these numbers say nothing about the method.")
    if result.get("synthetic"):
        notes.append("WARNING: the data set is synthetic (construct synth), not real tissue.")
    notes.append(f"Ours: {result['n_images']} images, {result['split']} split, {result['protocol']} protocol; "
                 f"mIoU/mDice over the tissue classes; FwIoU and Acc over all scored pixels (%).")
    if result.get("n_missing"):
        notes.append(f"Missing predictions, not scored ({result['n_missing']}): {_some(result['missing'])}.")
    if result.get("extra"):
        notes.append(f"Extra prediction files matching no image, ignored ({len(result['extra'])}): "
                     f"{_some(result['extra'])}.")
    return header, rows, notes, n_published


def _measured_row(label: str, m: dict, names: list[str]) -> list[str]:
    return [label, *(_fmt(m["IoU"][n]) for n in names), _fmt(m["mIoU"]), _fmt(m["mDice"]), _fmt(m["FwIoU"]),
            _fmt(m["pixel_accuracy"])]


def _some(names: list[str]) -> str:
    more = len(names) - NAMES_IN_NOTE
    return ", ".join(names[:NAMES_IN_NOTE]) + (f" and {more} more" if more > 0 else "")


def format_table(result: dict) -> str:
    """The comparison as a fixed-width text table followed by its notes."""
    header, rows, notes, n_published = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Method left-aligned, numbers right-aligned so decimals line up.
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(header))
    body = [line(r) for r in rows]
    # A rule above our rows keeps them apart from the published ones.
    published, ours = body[:n_published], body[n_published:]
    out = [line(header), rule, *published]
    if published:
        out.append(rule)
    out.extend(ours)
    return "\n".join([*out, "", *notes])
