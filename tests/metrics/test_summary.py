import math

import numpy as np
import pytest

from kidneyssl.metrics import (
    METRIC_NAMES,
    ROW_KEYS,
    MetricAccumulator,
    boundary_length_difference,
    compute_case_metrics,
    dice,
    hausdorff_distance,
    normalized_hausdorff,
    summarize,
)

SPACING = (2.5, 0.8, 1.1)


def test_row_has_contract_keys_and_matches_single_metrics(blob_pairs):
    pred, gt = blob_pairs[0]
    row = compute_case_metrics(pred, gt, SPACING)
    assert tuple(row) == ROW_KEYS
    assert row["dice"] == pytest.approx(dice(pred, gt))
    assert row["hd_mm"] == pytest.approx(hausdorff_distance(pred, gt, SPACING))
    assert row["hd95_mm"] == pytest.approx(hausdorff_distance(pred, gt, SPACING, 95))
    assert row["bl_pct"] == pytest.approx(boundary_length_difference(pred, gt, SPACING))
    assert row["nhd"] == pytest.approx(normalized_hausdorff(pred, gt))
    assert row["pred_voxels"] == pred.sum() and row["gt_voxels"] == gt.sum()
    assert row["empty_pred"] is False and row["empty_gt"] is False
    assert row["diag_mm"] == pytest.approx(math.sqrt((17 * 2.5) ** 2 + (21 * 0.8) ** 2 + (25 * 1.1) ** 2))
    assert compute_case_metrics(pred, gt, SPACING, bl_mode="perimeter")["bl_pct"] == pytest.approx(
        boundary_length_difference(pred, gt, SPACING, mode="perimeter"))


def test_row_is_unchanged_by_zero_padding(blob_pairs):
    pred, gt = blob_pairs[1]
    row = compute_case_metrics(pred, gt, SPACING)
    big_p = np.zeros((60, 70, 80), np.uint8)
    big_g = np.zeros_like(big_p)
    big_p[30:48, 40:62, 50:76] = pred
    big_g[30:48, 40:62, 50:76] = gt
    big = compute_case_metrics(big_p, big_g, SPACING)
    for key in ROW_KEYS:
        if key != "diag_mm":
            assert big[key] == pytest.approx(row[key], rel=1e-12), key


def test_row_empty_policies():
    gt = np.zeros((4, 5, 6), bool)
    gt[1:3, 1:4, 2:5] = True
    empty = np.zeros_like(gt)
    missed = compute_case_metrics(empty, gt, SPACING)
    assert missed["dice"] == 0.0 and missed["bl_pct"] == 100.0
    assert math.isnan(missed["hd_mm"]) and math.isnan(missed["hd95_mm"]) and math.isnan(missed["nhd"])
    assert missed["empty_pred"] is True and missed["empty_gt"] is False
    halluc = compute_case_metrics(gt, empty, SPACING)
    assert halluc["dice"] == 0.0 and math.isnan(halluc["bl_pct"]) and math.isnan(halluc["hd_mm"])
    assert halluc["empty_gt"] is True and halluc["empty_pred"] is False
    both = compute_case_metrics(empty, empty, SPACING)
    assert (both["dice"], both["hd_mm"], both["hd95_mm"], both["bl_pct"], both["nhd"]) == (1.0, 0.0, 0.0, 0.0, 0.0)
    assert both["empty_pred"] and both["empty_gt"]


def _row(hd95, dice_value=0.9, diag=500.0, empty_pred=False):
    return {"dice": dice_value, "hd_mm": hd95 * 1.5, "hd95_mm": hd95, "bl_pct": 10.0,
            "nhd": float("nan") if empty_pred else 0.001,
            "pred_voxels": 0.0 if empty_pred else 100.0, "gt_voxels": 100.0,
            "empty_pred": empty_pred, "empty_gt": False, "diag_mm": diag}


def test_summarize_hand_computed():
    s = summarize([_row(2.0, 0.8), _row(4.0, 0.9), _row(9.0, 1.0)])
    assert s["dice"]["mean"] == pytest.approx(0.9)
    assert s["dice"]["sd"] == pytest.approx(0.1)  # sample SD (ddof=1)
    assert s["hd95_mm"]["mean"] == pytest.approx(5.0) and s["hd95_mm"]["n"] == 3
    assert s["n_cases"] == 3 and s["n_empty_pred"] == 0 and s["n_missed"] == 0
    assert s["incomplete"] is False
    assert set(METRIC_NAMES) <= set(s)


def test_summarize_never_drops_a_missed_case_silently():
    # Model A finds every kidney (HD95 10 mm each); model B misses one and is sharper on the rest.
    a = [_row(10.0), _row(10.0), _row(10.0)]
    b = [_row(5.0), _row(5.0), _row(float("nan"), dice_value=0.0, diag=400.0, empty_pred=True)]
    sa, sb = summarize(a), summarize(b)
    # the trap: over non-NaN cases B looks better ...
    assert sb["hd95_mm"]["mean"] == 5.0 < sa["hd95_mm"]["mean"]
    # ... but the summary says so: counts and a flag
    assert sb["hd95_mm"]["n"] == 2 and sb["hd95_mm"]["n_nan"] == 1
    assert sb["n_missed"] == 1 and sb["n_empty_pred"] == 1 and sb["incomplete"] is True
    assert sb["dice"]["n"] == 3 and sb["dice"]["mean"] == pytest.approx(0.6)  # Dice counts the miss as 0
    # worst-case substitution: the miss costs the image diagonal
    worst = summarize(b, missing_hd="max")
    assert worst["hd95_mm"]["mean"] == pytest.approx((5 + 5 + 400) / 3)
    assert worst["hd95_mm"]["mean"] > sa["hd95_mm"]["mean"]
    assert worst["hd95_mm"]["n_substituted"] == 1 and worst["hd95_mm"]["n_nan"] == 0
    assert worst["nhd"]["n_nan"] == 1 and worst["incomplete"] is True  # nhd has no worst case


def test_summarize_reads_csv_strings_and_rejects_bad_options():
    rows = [{k: str(v) for k, v in _row(3.0).items()}, {k: str(v) for k, v in _row(5.0).items()}]
    rows[1]["empty_pred"] = "False"
    s = summarize(rows)
    assert s["hd95_mm"]["mean"] == 4.0 and s["n_empty_pred"] == 0
    with pytest.raises(ValueError, match="missing_hd"):
        summarize(rows, missing_hd="zero")
    no_diag = [{k: v for k, v in _row(float("nan")).items() if k != "diag_mm"}]
    with pytest.raises(ValueError, match="diag_mm"):
        summarize(no_diag, missing_hd="max")


def test_summarize_empty_and_single():
    s = summarize([])
    assert s["n_cases"] == 0 and s["dice"]["n"] == 0 and math.isnan(s["dice"]["mean"])
    one = summarize([_row(3.0)])
    assert one["hd95_mm"]["mean"] == 3.0 and math.isnan(one["hd95_mm"]["sd"])


def test_accumulator(blob_pairs):
    acc = MetricAccumulator()
    for i, (pred, gt) in enumerate(blob_pairs[:3]):
        row = acc.add(f"case_{i:05d}", pred, gt, SPACING, model="MwS")
        assert list(row)[:2] == ["case_id", "model"]
    acc.add("case_00003", np.zeros_like(blob_pairs[0][1]), blob_pairs[0][1], SPACING)
    assert len(acc) == 4 and [r["case_id"] for r in acc.rows][-1] == "case_00003"
    s = acc.aggregate()
    assert s["n_cases"] == 4 and s["n_missed"] == 1 and s["hd_mm"]["n_nan"] == 1
    expected = np.mean([r["dice"] for r in acc.rows])
    assert s["dice"]["mean"] == pytest.approx(expected)
    acc.rows[0]["dice"] = -1  # rows is a copy
    assert acc.rows[0]["dice"] >= 0
    acc.reset()
    assert len(acc) == 0
    with pytest.raises(ValueError):
        MetricAccumulator(bl_mode="volume")
