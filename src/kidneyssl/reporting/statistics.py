"""Statistics of a multi-seed comparison: paired differences with bootstrap intervals, and the
number of epochs a model needs to reach a fraction of another's final Dice (the paper's
faster-convergence claim).

All functions are pure (arrays and rows in, numbers out) and deterministic given ``seed``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["paired_differences", "bootstrap_mean_ci", "epochs_to_reach", "seed_means"]


def _number(value: Any) -> float:
    """A metric value as float; ``None`` (JSON null) and non-numbers are NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def bootstrap_mean_ci(diffs: np.ndarray, n_boot: int = 10000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a ``(seeds, cases)`` matrix of differences.

    Both levels are resampled, seeds and cases independently with replacement (a two-level
    bootstrap), so the interval reflects the variation between training runs as well as between
    cases; with one seed it is the ordinary case bootstrap. NaN entries are ignored.

    Returns:
        ``(low, high)``; NaNs when no finite value exists.
    """
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    if not np.isfinite(d).any():
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n_s, n_c = d.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        rows = d[rng.integers(0, n_s, n_s)]
        sample = rows[:, rng.integers(0, n_c, n_c)]
        stats[b] = np.nanmean(sample) if np.isfinite(sample).any() else np.nan
    stats = stats[np.isfinite(stats)]
    alpha = (1.0 - level) / 2.0
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha))


def paired_differences(rows: Sequence[Mapping[str, Any]], model: str, reference: str, metric: str,
                       part: str, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """``model - reference`` on ``metric`` over the (seed, case) pairs both models were scored on.

    Args:
        rows: per-case rows with ``seed``, ``model``, ``part``, ``case_id`` and the metric.
        model, reference: model names (e.g. ``MwS-region`` and ``MwoS``).
        metric: row key, e.g. ``dice`` or ``hd95_mm``.
        part: ``val`` or ``test``.

    Returns:
        ``{"mean", "ci_low", "ci_high", "n_pairs", "n_seeds", "n_cases", "wins", "losses",
        "per_seed"}``: the mean paired difference, its 95 % two-level bootstrap interval
        (:func:`bootstrap_mean_ci`), how many pairs favour each side (by sign, ties left out) and
        the mean difference per seed.
    """
    def table(name: str) -> dict[tuple[int, str], float]:
        return {(int(r["seed"]), str(r["case_id"])): _number(r.get(metric))
                for r in rows if r.get("model") == name and r.get("part") == part}

    a, b = table(model), table(reference)
    keys = sorted(set(a) & set(b))
    seeds = sorted({k[0] for k in keys})
    cases = sorted({k[1] for k in keys})
    matrix = np.full((len(seeds), len(cases)), np.nan)
    for s, c in keys:
        matrix[seeds.index(s), cases.index(c)] = a[(s, c)] - b[(s, c)]
    finite = matrix[np.isfinite(matrix)]
    low, high = bootstrap_mean_ci(matrix, n_boot=n_boot, seed=seed) if finite.size else (math.nan, math.nan)
    per_seed = {int(s): float(np.nanmean(matrix[i])) if np.isfinite(matrix[i]).any() else math.nan
                for i, s in enumerate(seeds)}
    return {"model": model, "reference": reference, "metric": metric, "part": part,
            "mean": float(finite.mean()) if finite.size else math.nan, "ci_low": low, "ci_high": high,
            "n_pairs": int(finite.size), "n_seeds": len(seeds), "n_cases": len(cases),
            "wins": int((finite > 0).sum()), "losses": int((finite < 0).sum()), "per_seed": per_seed}


def seed_means(rows: Sequence[Mapping[str, Any]], model: str, metric: str, part: str) -> dict[int, float]:
    """Mean of ``metric`` over cases, per seed, for one model and part (NaN values left out)."""
    out: dict[int, list[float]] = {}
    for r in rows:
        if r.get("model") == model and r.get("part") == part:
            v = _number(r.get(metric))
            out.setdefault(int(r["seed"]), [])
            if math.isfinite(v):
                out[int(r["seed"])].append(v)
    return {s: float(np.mean(v)) if v else math.nan for s, v in sorted(out.items())}


def epochs_to_reach(history: Sequence[Mapping[str, Any]], target: float, key: str = "val_dice") -> int | None:
    """First epoch number (1-based) whose ``key`` is at least ``target``; ``None`` if never."""
    for i, row in enumerate(history):
        value = row.get(key)
        if math.isfinite(_number(value)) and _number(value) >= target:
            return int(row.get("epoch", i)) + 1
    return None
