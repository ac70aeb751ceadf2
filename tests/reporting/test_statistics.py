"""Paired differences (two-level bootstrap; t-interval and sign-flip test for few cases), the Holm
correction, the verdict rule, per-seed means, epochs-to-reach."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kidneyssl.reporting.statistics import (
    bootstrap_mean_ci,
    compare_methods,
    comparison_pairs,
    epochs_to_reach,
    holm_adjust,
    paired_differences,
    seed_means,
    sign_flip_p_value,
    t_interval,
)


def _rows(values_a, values_b):
    rows = []
    for seed, (va, vb) in enumerate(zip(values_a, values_b)):
        for i, (a, b) in enumerate(zip(va, vb)):
            rows.append({"seed": seed, "case_id": f"c{i}", "model": "A", "part": "test", "dice": a})
            rows.append({"seed": seed, "case_id": f"c{i}", "model": "B", "part": "test", "dice": b})
    return rows


def test_paired_difference_of_a_constant_shift_has_a_zero_width_interval():
    rows = _rows([[0.9, 0.8, 0.7]] * 2, [[0.8, 0.7, 0.6]] * 2)
    d = paired_differences(rows, "A", "B", "dice", "test", n_boot=500)
    assert d["mean"] == pytest.approx(0.1) and d["ci_low"] == pytest.approx(0.1) and d["ci_high"] == pytest.approx(0.1)
    assert (d["n_pairs"], d["n_seeds"], d["n_cases"], d["wins"], d["losses"]) == (6, 2, 3, 6, 0)


def test_noise_around_zero_gives_an_interval_that_includes_zero():
    rng = np.random.default_rng(0)
    a = rng.uniform(0.6, 0.9, size=(3, 20))
    b = a + rng.normal(0.0, 0.05, size=a.shape)
    d = paired_differences(_rows(a, b), "A", "B", "dice", "test", n_boot=2000)
    assert d["ci_low"] < 0 < d["ci_high"]
    assert set(d["per_seed"]) == {0, 1, 2}


def test_bootstrap_is_deterministic_and_ignores_nan():
    m = np.array([[0.1, np.nan, 0.3], [0.2, 0.1, np.nan]])
    assert bootstrap_mean_ci(m, 300, seed=1) == bootstrap_mean_ci(m, 300, seed=1)
    low, high = bootstrap_mean_ci(m, 300)
    assert 0.1 - 1e-9 <= low <= high <= 0.3 + 1e-9
    assert all(math.isnan(v) for v in bootstrap_mean_ci(np.full((2, 2), np.nan), 10))


def test_only_pairs_present_for_both_models_count():
    rows = _rows([[0.9, 0.8]], [[0.5, 0.5]]) + [{"seed": 0, "case_id": "extra", "model": "A", "part": "test",
                                                 "dice": 0.0}]
    d = paired_differences(rows, "A", "B", "dice", "test", n_boot=100)
    assert d["n_pairs"] == 2 and d["mean"] == pytest.approx(0.35)
    assert seed_means(rows, "A", "dice", "test") == {0: pytest.approx((0.9 + 0.8 + 0.0) / 3)}


def test_epochs_to_reach():
    history = [{"epoch": 0, "val_dice": 0.2}, {"epoch": 1, "val_dice": float("nan")},
               {"epoch": 2, "val_dice": 0.81}, {"epoch": 3, "val_dice": 0.9}]
    assert epochs_to_reach(history, 0.8) == 3  # 1-based epoch numbers
    assert epochs_to_reach(history, 0.2) == 1
    assert epochs_to_reach(history, 0.95) is None


# ------------------------------------------------------------------ small-n methods, by hand
def test_exact_sign_flip_p_value_by_hand():
    # 4 positive differences: only all-plus and all-minus reach |sum| = 1.0 -> 2 of 16 patterns
    assert sign_flip_p_value([0.1, 0.2, 0.3, 0.4]) == (pytest.approx(2 / 16), "exact")
    # 2, 1, 1, -1 (sum 3): the 16 sums are 5, 3, 3, 3, 1, 1, 1, -1 and their negatives -> 8 reach |3|
    assert sign_flip_p_value([2.0, 1.0, 1.0, -1.0]) == (pytest.approx(8 / 16), "exact")
    assert sign_flip_p_value([1.0, 2.0, 3.0]) == (pytest.approx(2 / 8), "exact")
    assert sign_flip_p_value([0.0, 0.0])[0] == 1.0
    assert math.isnan(sign_flip_p_value([np.nan])[0])


def test_monte_carlo_sign_flip_is_seeded_and_close_to_the_exact_value():
    d = np.random.default_rng(3).normal(0.3, 1.0, size=21)
    exact, how = sign_flip_p_value(d, exact_max_n=21)
    assert how == "exact"
    p1, how1 = sign_flip_p_value(d, exact_max_n=20, n_resamples=20_000, seed=1)
    assert how1 == "Monte Carlo" and sign_flip_p_value(d, exact_max_n=20, n_resamples=20_000, seed=1)[0] == p1
    assert abs(p1 - exact) < 4 * math.sqrt(exact * (1 - exact) / 20_000) + 1e-4


def test_t_interval_by_hand():
    # mean 0.25, sd sqrt(0.05 / 3) = 0.1290994, se 0.0645497, t(0.975, 3 df) = 3.1824463 (tables)
    low, high = t_interval([0.1, 0.2, 0.3, 0.4])
    assert (low, high) == (pytest.approx(0.25 - 3.1824463 * 0.0645497, abs=1e-6),
                           pytest.approx(0.25 + 3.1824463 * 0.0645497, abs=1e-6))
    assert (low, high) == pytest.approx((0.0445739, 0.4554261), abs=1e-6)
    from scipy import stats

    assert (low, high) == pytest.approx(stats.t.interval(0.95, 3, loc=0.25, scale=math.sqrt(0.05 / 3) / 2))
    assert all(math.isnan(v) for v in t_interval([0.3]))


def test_holm_adjustment_by_hand():
    assert holm_adjust([0.03, 0.2]) == pytest.approx([0.06, 0.2])
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> running max 0.06
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    out = holm_adjust([0.02, math.nan])  # no values: left out of the family
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_few_cases_use_case_means_a_t_interval_and_an_exact_sign_flip():
    # 2 seeds x 4 cases; per case the mean over seeds is 0.1, 0.2, 0.3, 0.4
    a = [[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 0.9]]
    b = [[0.85, 0.7, 0.6, 0.45], [0.75, 0.7, 0.6, 0.55]]
    d = paired_differences(_rows(a, b), "A", "B", "dice", "test")
    assert (d["interval"], d["test"], d["n_cases"], d["n_seeds"]) == ("t", "sign-flip exact", 4, 2)
    assert d["p_value"] == pytest.approx(2 / 16)
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((0.0445739, 0.4554261), abs=1e-6)


def _pairs(diffs_by_model, seeds=1):
    """Rows of models A, C (and reference R = 0.5): A - R and C - R are the given differences."""
    rows = []
    for seed in range(seeds):
        for model, diffs in diffs_by_model.items():
            for i, d in enumerate(diffs):
                rows.append({"seed": seed, "case_id": f"c{i}", "model": model, "part": "test", "dice": 0.5 + d})
                if model == next(iter(diffs_by_model)):
                    rows.append({"seed": seed, "case_id": f"c{i}", "model": "R", "part": "test", "dice": 0.5})
    return rows


def test_holm_correction_takes_away_one_of_two_verdicts():
    # A - R: 6 positive differences, exact sign-flip p = 2/64 = 0.03125, t-interval above 0.
    # C - R: differences that cancel, p = 1. Alone, A is better (0.03125 <= 0.05); with C in the
    # family of two, Holm gives A 2 x 0.03125 = 0.0625 > 0.05 and C max(0.0625, 1) = 1: no verdict.
    a = [0.05, 0.06, 0.04, 0.05, 0.07, 0.05]
    c = [0.1, -0.1, 0.2, -0.2, 0.05, -0.05]
    rows = _pairs({"A": a, "C": c})
    opts = {"metrics": ("dice",), "min_seeds": 1, "min_cases": 5}
    alone = compare_methods(rows, [("A", "R")], **opts)
    assert [d["verdict"] for d in alone] == ["better"] and alone[0]["n_comparisons"] == 1
    assert alone[0]["p_value"] == pytest.approx(2 / 64) and alone[0]["p_holm"] == pytest.approx(2 / 64)
    both = compare_methods(rows, [("A", "R"), ("C", "R")], **opts)
    assert [d["n_comparisons"] for d in both] == [2, 2]
    assert [d["p_holm"] for d in both] == pytest.approx([0.0625, 1.0])
    assert [d["verdict"] for d in both] == ["no difference detectable"] * 2
    assert both[0]["ci_low"] > 0 and "excludes 0, but not after the correction" in both[0]["conclusion"]
    assert "Holm-adjusted p = 0.062 over 2 comparisons" in both[0]["conclusion"]
    # 7 positive differences: p = 2/128, Holm 2/64 <= 0.05: the verdict stays
    kept = compare_methods(_pairs({"A": a + [0.06], "C": c + [0.0]}), [("A", "R"), ("C", "R")], **opts)
    assert kept[0]["p_holm"] == pytest.approx(2 / 64) and kept[0]["verdict"] == "better"


def test_lower_is_better_metrics_and_comparison_pairs():
    rows = []
    for i in range(12):
        for seed in (0, 1):
            rows.append({"seed": seed, "case_id": f"c{i}", "model": "A", "part": "test", "hd95_mm": 5.0 + 0.1 * i})
            rows.append({"seed": seed, "case_id": f"c{i}", "model": "R", "part": "test", "hd95_mm": 9.0 + 0.1 * i})
    (d,) = compare_methods(rows, [("A", "R")], metrics=("hd95_mm",), n_boot=500)
    assert d["interval"] == "bootstrap" and d["mean"] == pytest.approx(-4.0) and d["verdict"] == "better"
    assert d["conclusion"].startswith("A is better than R (the 95 % interval excludes 0; Holm-adjusted p < 0.002")
    assert comparison_pairs(["MwS-region", "MwS-masked", "MAE", "MwoS"], ["MwoS", "MwS-region"]) == [
        ("MwS-region", "MwoS"), ("MwS-masked", "MwoS"), ("MAE", "MwoS"), ("MwS-masked", "MwS-region"),
        ("MAE", "MwS-region")]
    assert comparison_pairs(["A", "B"], ["MwoS"]) == []


def test_one_case_gives_no_interval_and_no_verdict():
    rows = _pairs({"A": [0.1]})
    (d,) = compare_methods(rows, [("A", "R")], metrics=("dice",), min_seeds=1, min_cases=1)
    assert math.isnan(d["ci_low"]) and d["p_value"] == 1.0 and d["verdict"] == "no difference detectable"
    assert d["conclusion"] == "no difference detectable between A and R (no interval from 1 case)"
