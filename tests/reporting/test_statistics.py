"""Paired differences with two-level bootstrap intervals, per-seed means, epochs-to-reach."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kidneyssl.reporting.statistics import (
    bootstrap_mean_ci,
    epochs_to_reach,
    paired_differences,
    seed_means,
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
