"""The label-fraction report: cases saved on a hand-made curve, its bootstrap, the figure."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.reporting.label_fractions import (
    cases_saved,
    curve_labels,
    dice_curves,
    equivalent_cases,
    label_curve_figure,
    write_label_fraction_report,
)

#: Scratch: 0.5 with 2 annotated cases, 0.7 with 8, 0.8 with 32.
SCRATCH = [(2, 0.5), (8, 0.7), (32, 0.8)]


@pytest.mark.parametrize("dice, cases, status", [
    (0.6, 4.0, "interpolated"),               # halfway between 2 and 8 in log scale
    (0.75, 16.0, "interpolated"),             # halfway between 8 and 32
    (0.7, 8.0, "interpolated"),               # on a point
    (0.5, 2.0, "interpolated"),               # on the first point
    (0.85, math.inf, "not reached"),          # above everything scratch reaches
    (0.4, -math.inf, "below the curve"),      # below scratch's smallest budget: nothing extrapolated
    (math.nan, math.nan, "no data"),
])
def test_equivalent_cases_on_a_hand_made_curve(dice: float, cases: float, status: str) -> None:
    found, how = equivalent_cases(SCRATCH, dice)
    assert how == status
    assert found == pytest.approx(cases, rel=1e-9, nan_ok=True)


def test_a_dipping_curve_is_read_at_its_first_crossing() -> None:
    assert equivalent_cases([(2, 0.5), (4, 0.7), (8, 0.6), (16, 0.8)], 0.65)[0] == pytest.approx(2 * 2 ** 0.75)
    assert equivalent_cases([(4, 0.7), (2, 0.5)], 0.6)[0] == pytest.approx(2 * 2 ** 0.5)  # any point order


def _rows(means: dict[tuple[str, int], float], seeds=(0, 1, 2), cases=12, noise=0.0, seed=0) -> list[dict]:
    """Per-case test rows: each (model, annotated cases) at its mean, plus case noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for (model, n), mean in means.items():
        for s in seeds:
            for c in range(cases):
                rows.append({"model": model, "annotated_cases": n, "seed": s, "case_id": f"c{c}", "part": "test",
                             "dice": mean + noise * rng.standard_normal()})
    return rows


def test_cases_saved_point_and_interval() -> None:
    means = {**{("MwoS", n): d for n, d in SCRATCH}, ("MwS", 2): 0.6, ("MwS", 8): 0.75, ("MwS", 32): 0.9}
    out = {(e["model"], e["annotated_cases"]): e for e in cases_saved(_rows(means), "MwoS", ["MwS"], n_boot=200)}
    two = out[("MwS", 2)]
    assert two["status"] == "interpolated" and two["scratch_cases"] == pytest.approx(4.0) and two["saved"] == pytest.approx(2.0)
    assert two["ci_low"] == pytest.approx(2.0) and two["ci_high"] == pytest.approx(2.0)  # no noise: no spread
    assert out[("MwS", 8)]["saved"] == pytest.approx(8.0)
    top = out[("MwS", 32)]
    assert top["status"] == "not reached" and top["saved"] == math.inf and top["share_not_reached"] == 1.0
    assert top["ci_low"] == math.inf  # the interval's bound is open: not reached in every resample

    noisy = cases_saved(_rows(means, noise=0.05, seed=1), "MwoS", ["MwS"], n_boot=300)
    e = next(e for e in noisy if e["annotated_cases"] == 2)
    assert e["ci_low"] < e["saved"] < e["ci_high"] and e["n_seeds"] == 3 and e["n_cases"] == 12

    few = cases_saved(_rows(means, cases=4), "MwoS", ["MwS"], n_boot=50)
    assert all(math.isnan(e["ci_low"]) and "fewer than 10 test cases" in e["ci_note"] for e in few)


def test_the_figure_has_a_line_per_model_on_a_log_axis() -> None:
    means = {**{("MwoS", n): d for n, d in SCRATCH}, **{("MwS-region", n): d + 0.05 for n, d in SCRATCH},
             **{("MAE", n): d + 0.02 for n, d in SCRATCH}}
    curves = dice_curves(_rows(means, noise=0.02))
    assert curves["MwoS"][8]["n_seeds"] == 3 and curves["MwoS"][8]["mean"] == pytest.approx(0.7, abs=0.02)
    fig = label_curve_figure(curves, total_cases=32)
    assert sorted(curve_labels(fig)) == ["MAE", "MwS-region", "MwoS"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    line = next(ln for ln in ax.get_lines() if str(ln.get_label()).startswith("MwoS"))
    assert list(line.get_xdata()) == [2, 8, 32]
    assert len(ax.collections) == 3  # one min-max band over seeds per model


def test_report_files(tmp_path: Path) -> None:
    means = {**{("MwoS", n): d for n, d in SCRATCH}, **{("MwS-region", n): d + 0.05 for n, d in SCRATCH}}
    rows = _rows(means, noise=0.03)
    cost = {"MwS-region": {n: {s: {"pretrain": {"device_seconds": 36.0, "device": "cpu"},
                                   "finetune": {"device_seconds": 72.0, "device": "cpu"}} for s in (0, 1, 2)}
                           for n, _ in SCRATCH}}
    report, result = write_label_fraction_report(tmp_path, rows, scratch="MwoS", models=["MwS-region"],
                                                 budgets={2: "2 cases", 8: "25 % (8 cases)", 32: "all (32 cases)"},
                                                 cost=cost, n_boot=200)
    for name in ("label_fractions.md", "label_fractions.html", "label_fractions.json", "label_fractions.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    text = report.read_text()
    assert "MwS-region − MwoS" in text and "25 % (8 cases)" in text and "0.010" in text  # 36 s = 0.010 device-h
    saved = json.loads((tmp_path / "label_fractions.json").read_text())["cases_saved"]
    assert {(e["model"], e["annotated_cases"]) for e in saved} == {("MwS-region", n) for n, _ in SCRATCH}
    assert len(result["differences"]) == 3 and {d["n_comparisons"] for d in result["differences"]} == {3}
