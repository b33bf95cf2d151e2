"""The Table 2 comparison: published rows, our row, and the notes that keep it honest."""

from __future__ import annotations

from construct.evaluate.table import PAPER_CLASSES, PAPER_TABLE2, format_table, our_label, table_rows


def result(**over) -> dict:
    base = {
        "protocol": "bcss", "split": "test", "n_images": 3, "classes": list(PAPER_CLASSES),
        "mIoU": 50.0, "mDice": 60.0, "FwIoU": 70.0, "pixel_accuracy": 80.0,
        "IoU": {"TUM": 40.0, "STR": 50.0, "LYM": 60.0, "NEC": None},
        "Dice": {"TUM": 55.0, "STR": 65.0, "LYM": 75.0, "NEC": None},
        "confusion": [], "n_missing": 0, "missing": [], "extra": [], "random_weights": False, "synthetic": False,
    }
    return {**base, **over}


def dice_of(iou: float) -> float:
    """Dice of one class from its IoU (both in %): D = 2J / (1 + J)."""
    j = iou / 100
    return 100 * 2 * j / (1 + j)


def test_published_numbers_hold_together():
    """A mistyped number shows: the paper's per-class IoUs give its mIoU and (through D = 2J/(1+J)) its
    mDice, to the two decimals printed; for rows with means only, mDice lies between mIoU and the Dice of
    the mean IoU (D is concave, so the mean of the Dices is at most the Dice of the mean)."""
    rows = {p.method: p for p in PAPER_TABLE2}
    assert [p.method for p in PAPER_TABLE2] == ["TPRO", "MLPS", "Proto2Seg", "PBIP", "ConStruct (paper)"]
    paper = rows["ConStruct (paper)"]
    assert set(paper.iou) == set(PAPER_CLASSES)
    ious = list(paper.iou.values())
    assert abs(sum(ious) / len(ious) - paper.miou) <= 0.005
    assert abs(sum(map(dice_of, ious)) / len(ious) - paper.mdice) <= 0.01
    for row in PAPER_TABLE2:
        assert row.miou < row.mdice <= dice_of(row.miou) + 0.005, row.method
    assert all(v is None for v in rows["PBIP"].iou.values())  # unknown stays unknown
    # and the table shows them as published
    _, table, _, n_published = table_rows(result())
    assert [r[0] for r in table[:n_published]] == [p.method for p in PAPER_TABLE2]
    assert table[n_published - 1][1:7] == ["81.59", "67.99", "62.70", "71.56", "70.96", "82.83"]


def test_our_row_last_with_undefined_as_dash():
    header, rows, _, n_published = table_rows(result())
    assert header[:5] == ["Method", "IoU TUM", "IoU STR", "IoU LYM", "IoU NEC"]
    assert rows[-1] == ["ours", "40.00", "50.00", "60.00", "-", "50.00", "60.00", "70.00", "80.00"]
    assert len(rows) == n_published + 1 == len(PAPER_TABLE2) + 1


def test_random_and_synthetic_marked():
    r = result(random_weights=True, synthetic=True)
    assert our_label(r) == "ours (random backbones, synthetic data)"
    assert format_table(r).count("WARNING") == 2
    assert our_label(result(synthetic=True)) == "ours (synthetic data)"


def test_not_comparable_note_for_other_split_or_protocol():
    assert "NOT COMPARABLE" not in format_table(result())
    assert "NOT COMPARABLE" in format_table(result(split="valid"))
    assert "NOT COMPARABLE" in format_table(result(protocol="ignore-background"))


def test_published_rows_omitted_for_other_classes():
    r = result(classes=["TE", "NEC", "LYM", "TAS"], IoU=dict.fromkeys(["TE", "NEC", "LYM", "TAS"], 1.0))
    header, rows, notes, _ = table_rows(r)
    assert len(rows) == 1 and "IoU TE" in header
    assert any("omitted" in n for n in notes)


def test_text_table_aligned():
    lines = format_table(result()).splitlines()
    table = lines[: lines.index("")]
    assert len({len(line) for line in table}) == 1
