"""Statistics of a multi-seed comparison: paired differences with intervals and p-values, the
Holm correction over the comparisons a report makes, the rule that decides when a direction
("better", "worse") may be stated, and the number of epochs a model needs to reach a fraction of
another's final Dice (the paper's faster-convergence claim).

The pairing unit is one (seed, case): model and reference trained with the same seed and scored
on the same case. How the pairs are summarised depends on how many cases there are:

* at least :data:`BOOTSTRAP_MIN_CASES` cases: the mean over all pairs, with a 95 % two-level
  percentile bootstrap interval (seeds and cases resampled independently), and the bootstrap
  p-value that is dual to it (twice the smaller share of resampled means on either side of 0);
* fewer cases (a percentile bootstrap over a handful of numbers is not a valid interval: three
  positive differences always give one that excludes 0): each case's differences are first
  averaged over the seeds, so the unit is the case and n is the number of cases (seeds are
  repeated trainings on the same cases, not independent samples of cases); then a 95 %
  t-interval over those case means and a two-sided sign-flip (permutation) p-value, exact over
  all 2^n sign patterns up to :data:`EXACT_SIGN_FLIP_MAX_N` cases and Monte Carlo with a fixed
  seed above.

A direction is stated only when the design can support one (:func:`compare_methods`): at least
``min_seeds`` seeds, at least ``min_cases`` paired cases, the 95 % interval excludes 0 and the
Holm-adjusted p-value is below ``alpha``.

All functions are pure (arrays and rows in, numbers out) and deterministic given ``seed``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["paired_differences", "bootstrap_mean_ci", "bootstrap_p_value", "sign_flip_p_value", "t_interval",
           "holm_adjust", "comparison_pairs", "compare_methods", "conclusion", "format_p", "epochs_to_reach", "seed_means",
           "BOOTSTRAP_MIN_CASES", "EXACT_SIGN_FLIP_MAX_N", "HIGHER_IS_BETTER"]

#: Fewest cases for the percentile bootstrap; below, a t-interval and a sign-flip test are used.
BOOTSTRAP_MIN_CASES = 10
#: Up to this many units the sign-flip p-value enumerates all 2^n sign patterns exactly.
EXACT_SIGN_FLIP_MAX_N = 20
#: Which way is better, per metric row key (Dice up; distances and boundary-length error down).
HIGHER_IS_BETTER: dict[str, bool] = {"dice": True, "dice_tumor": True, "hd_mm": False, "hd95_mm": False,
                                     "bl_pct": False, "nhd": False}


def _number(value: Any) -> float:
    """A metric value as float; ``None`` (JSON null) and non-numbers are NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _bootstrap_means(diffs: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Means of ``n_boot`` two-level resamples (seeds, then cases) of a ``(seeds, cases)`` matrix."""
    d = np.atleast_2d(np.asarray(diffs, dtype=np.float64))
    rng = np.random.default_rng(seed)
    n_s, n_c = d.shape
    stats = np.empty(n_boot)
    for b in range(n_boot):
        rows = d[rng.integers(0, n_s, n_s)]
        sample = rows[:, rng.integers(0, n_c, n_c)]
        stats[b] = np.nanmean(sample) if np.isfinite(sample).any() else np.nan
    return stats[np.isfinite(stats)]


def bootstrap_mean_ci(diffs: np.ndarray, n_boot: int = 10000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a ``(seeds, cases)`` matrix of differences.

    Both levels are resampled, seeds and cases independently with replacement (a two-level
    bootstrap), so the interval reflects the variation between training runs as well as between
    cases; with one seed it is the ordinary case bootstrap. NaN entries are ignored. Not valid for
    a handful of cases (see the module docstring).

    Returns:
        ``(low, high)``; NaNs when no finite value exists.
    """
    low, high, _ = _bootstrap_summary(diffs, n_boot, level, seed)
    return low, high


def bootstrap_p_value(diffs: np.ndarray, n_boot: int = 10000, seed: int = 0) -> float:
    """Two-sided bootstrap p-value of "mean difference = 0", dual to :func:`bootstrap_mean_ci`.

    ``2 * min(share of resampled means <= 0, share >= 0)``, at most 1: the percentile interval
    at level ``1 - a`` excludes 0 exactly when this is below ``a`` (up to the quantiles'
    interpolation). Its resolution is ``1 / n_boot``; 0 means "below that". Same ``seed`` and
    ``n_boot`` give the same resamples as the interval. NaN when no finite value exists.
    """
    return _bootstrap_summary(diffs, n_boot, 0.95, seed)[2]


def _bootstrap_summary(diffs: np.ndarray, n_boot: int, level: float, seed: int) -> tuple[float, float, float]:
    """``(low, high, p)`` of :func:`bootstrap_mean_ci` and :func:`bootstrap_p_value` from one set
    of resamples; NaNs when no finite value exists."""
    if not np.isfinite(np.asarray(diffs, dtype=np.float64)).any():
        return math.nan, math.nan, math.nan
    stats = _bootstrap_means(diffs, n_boot, seed)
    alpha = (1.0 - level) / 2.0
    p = min(1.0, 2.0 * min(float(np.mean(stats <= 0.0)), float(np.mean(stats >= 0.0))))
    return float(np.quantile(stats, alpha)), float(np.quantile(stats, 1.0 - alpha)), p


def sign_flip_p_value(diffs: Sequence[float] | np.ndarray, *, exact_max_n: int = EXACT_SIGN_FLIP_MAX_N,
                      n_resamples: int = 100_000, seed: int = 0) -> tuple[float, str]:
    """Two-sided sign-flip (paired permutation) p-value of "the differences are symmetric about 0".

    Under the null hypothesis each difference is as likely to have either sign, so the observed
    ``|sum(d)|`` is compared with ``|sum(s_i d_i)|`` over sign patterns ``s``. Up to
    ``exact_max_n`` values all ``2^n`` patterns are enumerated (p = share with ``|sum| >=``
    observed, the observed pattern included, so p >= 2 / 2^n); above, ``n_resamples`` random
    patterns with a fixed ``seed`` give ``p = (1 + hits) / (1 + n_resamples)``. NaNs are dropped.

    Example: four positive differences 0.1, 0.2, 0.3, 0.4: only the all-plus and all-minus
    patterns reach |sum| = 1.0, so p = 2/16 = 0.125.

    Returns:
        ``(p, method)``, ``method`` ``"exact"`` or ``"Monte Carlo"``; ``(nan, "exact")`` for no values.
    """
    d = np.asarray(diffs, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    if d.size == 0:
        return math.nan, "exact"
    observed = abs(float(d.sum()))
    tol = 1e-9 * max(1.0, float(np.abs(d).sum()))  # equal sums computed in another order are ties
    if d.size <= exact_max_n:
        sums = np.zeros(1)
        for value in d:  # every pattern's sum, built one value at a time (2^n floats)
            sums = np.concatenate([sums + value, sums - value])
        return float(np.mean(np.abs(sums) >= observed - tol)), "exact"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 10_000):
        signs = rng.choice((-1.0, 1.0), size=(min(10_000, n_resamples - start), d.size))
        hits += int(np.sum(np.abs(signs @ d) >= observed - tol))
    return (1.0 + hits) / (1.0 + n_resamples), "Monte Carlo"


def t_interval(values: Sequence[float] | np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean: ``mean ± t(1 - (1 - level) / 2, n - 1) * sd / sqrt(n)``
    (sample sd, ddof=1). NaNs are dropped; ``(nan, nan)`` for fewer than 2 values."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    if x.size < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(1.0 - (1.0 - level) / 2.0, x.size - 1)) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return float(x.mean()) - half, float(x.mean()) + half


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order.

    Sorted ascending, the i-th smallest of m p-values (i = 1..m) becomes
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``; a hypothesis is rejected at level ``a``
    when its adjusted p-value is ``<= a``. NaN entries (no values) are left NaN and do not count
    in m. Example: 0.03 and 0.2 become 0.06 and 0.2, so the first no longer passes 0.05.
    """
    p = [float(v) for v in p_values]
    finite = sorted((v, i) for i, v in enumerate(p) if math.isfinite(v))
    m = len(finite)
    out = [math.nan] * len(p)
    running = 0.0
    for rank, (value, index) in enumerate(finite):
        running = max(running, min(1.0, (m - rank) * value))
        out[index] = running
    return out


def paired_differences(rows: Sequence[Mapping[str, Any]], model: str, reference: str, metric: str,
                       part: str, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """``model - reference`` on ``metric`` over the (seed, case) pairs both models were scored on.

    Args:
        rows: per-case rows with ``seed``, ``model``, ``part``, ``case_id`` and the metric.
        model, reference: any two model names (e.g. ``MwS-region`` and ``MwoS``).
        metric: row key, e.g. ``dice`` or ``hd95_mm``.
        part: ``val`` or ``test``.
        n_boot, seed: bootstrap resamples and the seed of every random draw.

    Returns:
        ``{"model", "reference", "metric", "part", "mean", "ci_low", "ci_high", "interval",
        "p_value", "test", "n_pairs", "n_seeds", "n_cases", "wins", "losses", "per_seed"}``: the
        mean paired difference; its 95 % interval and p-value, with ``interval`` and ``test``
        naming the methods (``"bootstrap"`` for both with at least :data:`BOOTSTRAP_MIN_CASES`
        cases, else ``"t"`` and ``"sign-flip exact"``/``"sign-flip Monte Carlo"`` over the case
        means; see the module docstring); the numbers of pairs, seeds and cases with a finite
        difference; how many pairs favour each side by sign (``wins``: model higher, ties left
        out); and the mean difference per seed.
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
    with np.errstate(all="ignore"):
        has_seed, has_case = np.isfinite(matrix).any(axis=1), np.isfinite(matrix).any(axis=0)
    n_cases = int(has_case.sum())
    out: dict[str, Any] = {"model": model, "reference": reference, "metric": metric, "part": part,
                           "mean": float(finite.mean()) if finite.size else math.nan}
    if n_cases >= BOOTSTRAP_MIN_CASES:
        low, high, p = _bootstrap_summary(matrix, n_boot, 0.95, seed)
        out.update(ci_low=low, ci_high=high, interval="bootstrap", p_value=p, test="bootstrap")
    else:
        # the unit is the case: its differences averaged over the seeds (module docstring)
        case_means = np.array([np.nanmean(matrix[:, j]) for j in np.flatnonzero(has_case)])
        low, high = t_interval(case_means)
        p, how = sign_flip_p_value(case_means, seed=seed)
        out.update(ci_low=low, ci_high=high, interval="t", p_value=p, test=f"sign-flip {how}")
    per_seed = {int(s): float(np.nanmean(matrix[i])) if has_seed[i] else math.nan for i, s in enumerate(seeds)}
    out.update(n_pairs=int(finite.size), n_seeds=int(has_seed.sum()), n_cases=n_cases,
               wins=int((finite > 0).sum()), losses=int((finite < 0).sum()), per_seed=per_seed)
    return out


def comparison_pairs(models: Sequence[str], baselines: Sequence[str]) -> list[tuple[str, str]]:
    """``(model, baseline)`` pairs: every other model against each baseline present in ``models``.

    A pair already made the other way round (baseline against an earlier baseline) is not
    repeated. Example: models ``MwS-region, MwS-masked, MwoS`` and baselines ``MwoS, MwS-region``
    give ``(MwS-region, MwoS), (MwS-masked, MwoS), (MwS-masked, MwS-region)``.
    """
    pairs: list[tuple[str, str]] = []
    for base in baselines:
        if base not in models:
            continue
        for model in models:
            if model != base and (model, base) not in pairs and (base, model) not in pairs:
                pairs.append((model, base))
    return pairs


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def format_p(d: Mapping[str, Any], adjusted: bool = False) -> str:
    """``p = 0.031`` for a comparison's p-value (``adjusted``: its Holm-adjusted one); a bootstrap
    p-value of 0 is below the resampling's resolution and reads ``p < 1/n_boot`` (adjusted: times
    the number of comparisons)."""
    p = float(d["p_holm"] if adjusted else d["p_value"])
    if not math.isfinite(p):
        return "p = –"
    if p == 0.0 and d.get("test") == "bootstrap":
        factor = float(d.get("n_comparisons", 1)) if adjusted else 1.0
        return f"p < {factor / float(d.get('n_boot', 10000)):.2g}"
    return f"p = {p:.2g}"


def conclusion(d: Mapping[str, Any]) -> str:
    """The words a report may print about one comparison of :func:`compare_methods` (its
    ``verdict`` says the same as one word; see that function for the rule)."""
    model, ref = d["model"], d["reference"]
    verdict = d["verdict"]
    if verdict == "no paired values":
        return "no paired values"
    if verdict == "too few":
        return (f"too few seeds/cases for a conclusion (n = {_plural(d['n_cases'], 'case')} x "
                f"{_plural(d['n_seeds'], 'seed')}; at least {_plural(d['min_seeds'], 'seed')} and "
                f"{_plural(d['min_cases'], 'case')} are needed)")
    holm = f"Holm-adjusted {format_p(d, adjusted=True)} over {_plural(d['n_comparisons'], 'comparison')}"
    if verdict in ("better", "worse"):
        return f"{model} is {verdict} than {ref} (the 95 % interval excludes 0; {holm})"
    if not (math.isfinite(d["ci_low"]) and math.isfinite(d["ci_high"])):
        return f"no difference detectable between {model} and {ref} (no interval from {_plural(d['n_cases'], 'case')})"
    if d["ci_low"] > 0 or d["ci_high"] < 0:
        return (f"no difference detectable between {model} and {ref} (the 95 % interval excludes 0, but not "
                f"after the correction for several comparisons: {holm}, not below {d['alpha']:g})")
    return f"no difference detectable between {model} and {ref} (the 95 % interval includes 0; {holm})"


def compare_methods(rows: Sequence[Mapping[str, Any]], comparisons: Sequence[tuple[str, str]],
                    metrics: Sequence[str] = ("dice", "hd95_mm"), parts: Sequence[str] = ("test", "val"), *,
                    min_seeds: int = 2, min_cases: int = 10, alpha: float = 0.05, n_boot: int = 10000,
                    seed: int = 0) -> list[dict[str, Any]]:
    """Every ``(model, reference)`` comparison on every metric and part, with the verdict the
    design supports.

    Args:
        rows: per-case rows (see :func:`paired_differences`), any model names.
        comparisons: ``(model, reference)`` pairs, e.g. :func:`comparison_pairs`.
        metrics: row keys; which way is better comes from :data:`HIGHER_IS_BETTER` (unknown: higher).
        parts: the parts to compare on; parts without rows are left out.
        min_seeds, min_cases: fewest seeds and paired cases for a direction to be stated
            (``protocol.min_seeds_for_verdict`` / ``min_cases_for_verdict``).
        alpha: family-wise error rate of the Holm correction.

    Returns:
        One :func:`paired_differences` dict per (part, comparison, metric), in that order, plus
        ``higher_is_better``; ``n_comparisons`` (the Holm family: every comparison x metric of the
        same part with a p-value; validation and test are separate analyses, so each part is
        its own family); ``p_holm``; ``alpha``, ``min_seeds``, ``min_cases``, ``n_boot``;
        ``verdict``: ``"better"``/``"worse"`` (model vs reference) only with at least
        ``min_seeds`` seeds and ``min_cases`` cases, a 95 % interval that excludes 0 and
        ``p_holm <= alpha``; else ``"no difference detectable"``, ``"too few"`` (below the
        thresholds, whatever the numbers) or ``"no paired values"``; and ``conclusion``, the
        sentence (:func:`conclusion`).
    """
    out: list[dict[str, Any]] = []
    present = {r.get("part") for r in rows}
    for part in [p for p in parts if p in present]:
        family = [paired_differences(rows, m, ref, metric, part, n_boot=n_boot, seed=seed)
                  for m, ref in comparisons for metric in metrics]
        adjusted = holm_adjust([d["p_value"] for d in family])
        m = sum(math.isfinite(p) for p in adjusted)
        for d, p_holm in zip(family, adjusted):
            higher = HIGHER_IS_BETTER.get(d["metric"], True)
            d.update(higher_is_better=higher, n_comparisons=m, p_holm=p_holm, alpha=alpha, min_seeds=int(min_seeds),
                     min_cases=int(min_cases), n_boot=int(n_boot))
            low, high = d["ci_low"], d["ci_high"]
            if not d["n_pairs"] or not math.isfinite(d["mean"]):
                verdict = "no paired values"
            elif d["n_seeds"] < min_seeds or d["n_cases"] < min_cases:
                verdict = "too few"
            elif math.isfinite(low) and math.isfinite(high) and (low > 0 or high < 0) and p_holm <= alpha:
                verdict = "better" if (low > 0) == higher else "worse"
            else:
                verdict = "no difference detectable"
            d["verdict"] = verdict
            d["conclusion"] = conclusion(d)
            out.append(d)
    return out


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
