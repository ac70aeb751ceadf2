import math

import pytest

from kidneyssl.metrics import summarize
from kidneyssl.reporting.tables import (
    read_case_table,
    summary_markdown,
    write_case_table,
)


def _row(case_id, dice, hd95, empty_pred=False, diag=300.0):
    return {"case_id": case_id, "dice": dice, "hd_mm": hd95 + 1.0, "hd95_mm": hd95, "bl_pct": 12.5,
            "nhd": float("nan") if empty_pred else 1e-4, "pred_voxels": 0.0 if empty_pred else 50.0,
            "gt_voxels": 60.0, "empty_pred": empty_pred, "empty_gt": False, "diag_mm": diag}


def test_case_table_round_trip(tmp_path):
    rows = [_row("case_00001", 0.91, 3.25), _row("case_00002", 0.0, float("nan"), empty_pred=True)]
    rows[1]["note"] = "missing prediction"  # a column only one row has
    path = write_case_table(rows, tmp_path / "sub" / "cases.csv")
    text = path.read_text().splitlines()
    assert text[0].split(",")[:3] == ["case_id", "dice", "hd_mm"] and text[0].endswith("note")
    back = read_case_table(path)
    assert [r["case_id"] for r in back] == ["case_00001", "case_00002"]
    assert back[0]["dice"] == 0.91 and back[0]["empty_pred"] is False and back[0]["note"] is None
    assert math.isnan(back[1]["hd95_mm"]) and back[1]["empty_pred"] is True
    assert back[1]["note"] == "missing prediction"
    assert not list(tmp_path.joinpath("sub").glob(".*tmp*"))  # atomic write left no temp file
    # values survive exactly, so the summary of the read-back table is the same
    assert summarize(back)["dice"] == summarize(rows)["dice"]


def test_summary_markdown_single_reports_counts_and_undefined():
    rows = [_row("a", 0.9, 4.0), _row("b", 0.8, 6.0), _row("c", 0.0, float("nan"), empty_pred=True)]
    md = summary_markdown(summarize(rows), title="Validation")
    assert md.startswith("## Validation\n")
    assert "| Dice (DC) | 0.567 ± 0.493 |" in md  # mean of 0.9, 0.8, 0.0; sample SD
    assert "| HD95 (mm) | 5.000 ± 1.414 (n=2/3, 1 undefined) |" in md
    assert "| missed (empty prediction) | 1 |" in md and "| cases | 3 |" in md
    assert "a model that misses more can look better" in md
    worst = summary_markdown(summarize(rows, missing_hd="max"))
    assert "(1 worst-case)" in worst and "image diagonal" in worst


def test_summary_markdown_side_by_side():
    a = summarize([_row("a", 0.90, 4.0), _row("b", 0.92, 5.0)])
    b = summarize([_row("a", 0.93, 3.0), _row("b", 0.95, 3.5)])
    md = summary_markdown({"MwoS": a, "MwS": b})
    lines = md.splitlines()
    assert lines[0] == "| Metric | MwoS (mean ± SD) | MwS (mean ± SD) |"
    dice_line = next(line for line in lines if line.startswith("| Dice (DC) |"))
    assert dice_line == "| Dice (DC) | 0.910 ± 0.014 | 0.940 ± 0.014 |"
    assert any(line.startswith("| normalised HD") and "e-04 ± " in line for line in lines)  # tiny values keep their size
    assert "undefined" not in md  # complete summaries carry no warning


@pytest.mark.parametrize("digits", [1, 4])
def test_summary_markdown_digits(digits):
    md = summary_markdown(summarize([_row("a", 0.9, 4.0), _row("b", 0.8, 6.0)]), digits=digits)
    assert f"| HD95 (mm) | {5.0:.{digits}f} ± {math.sqrt(2):.{digits}f} |" in md
