"""How many annotated cases is pretraining worth? The label-fraction report (issue 22).

From the per-case test rows of every model at every label budget (``annotated_cases``), it writes
beside the experiment's report:

* ``label_fractions.png``: mean test Dice against the number of annotated cases (log x axis),
  one line per model (scratch included), mean over seeds with a band from the lowest to the
  highest seed (:func:`label_curve_figure`);
* per budget, each method minus scratch trained on the same cases with the same seed, with the
  experiment's small-sample rules (:func:`~kidneyssl.reporting.statistics.compare_methods`: one
  Holm family over every budget x method, test part, Dice);
* **annotated cases saved**: for each method and budget ``n``, the number of annotated cases
  ``n*`` at which scratch reaches the method's mean test Dice, and ``n* - n``
  (:func:`equivalent_cases`), with a bootstrap interval (:func:`cases_saved`);
* beside it, each method's pretraining cost in device-seconds (from ``experiment.json``), so
  GPU-hours can be weighed against annotation;
* ``label_fractions.md`` / ``.html`` / ``.json``.

**Interpolation.** The scratch curve is piecewise linear in ``log(cases)`` between its budgets;
``n*`` is where it first reaches the method's Dice. Outside the curve's range nothing is
extrapolated: a Dice above every scratch point is ``not reached`` (scratch would need more than
all the training cases: more than ``N - n`` saved), one below scratch's smallest budget is
``below the curve`` (fewer than ``n_min`` cases would do: fewer than ``n_min - n`` saved). A
scratch curve that dips is read at its first crossing.

**Interval.** Seeds and test cases are resampled with replacement (two-level, as the paired
differences are), the same draw for every model and budget (the design is paired), both curves'
means recomputed and the interpolation redone; the 2.5 % and 97.5 % order statistics of ``n* - n``
are the interval, with ``not reached`` / ``below the curve`` as +/- infinity (so a bound may be
open). Seeds carry their own subsets (:mod:`kidneyssl.training.label_budget`), so resampling seeds
also resamples which cases were annotated. As for the paired differences, fewer than
:data:`~kidneyssl.reporting.statistics.BOOTSTRAP_MIN_CASES` test cases give no interval.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from kidneyssl.reporting.statistics import BOOTSTRAP_MIN_CASES

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["equivalent_cases", "dice_curves", "cases_saved", "label_curve_figure", "curve_labels",
           "write_label_fraction_report", "FIGURE_NAME"]

FIGURE_NAME = "label_fractions.png"
#: ``equivalent_cases`` statuses.
INTERPOLATED, ABOVE, BELOW = "interpolated", "not reached", "below the curve"


def equivalent_cases(curve: Sequence[tuple[float, float]], dice: float) -> tuple[float, str]:
    """The number of annotated cases at which ``curve`` (scratch: ``(cases, mean Dice)``) first
    reaches ``dice``, interpolating linearly in ``log(cases)`` between its points.

    Returns:
        ``(cases, "interpolated")``; ``(inf, "not reached")`` when ``dice`` is above every point
        the curve reaches; ``(-inf, "below the curve")`` when it is below the curve's first point
        (fewer cases than its smallest budget would do); ``(nan, "no data")`` without points or
        with a NaN ``dice``.

    Example: scratch 0.5 with 2 cases and 0.7 with 8: Dice 0.6 is reached at 4 cases (halfway in
    log scale); 0.8 is not reached; 0.4 is below the curve.
    """
    points = sorted((float(n), float(d)) for n, d in curve if n > 0 and math.isfinite(float(d)))
    if not points or not math.isfinite(dice):
        return math.nan, "no data"
    if dice < points[0][1]:
        return -math.inf, BELOW
    if dice == points[0][1]:
        return points[0][0], INTERPOLATED
    for (n0, d0), (n1, d1) in zip(points, points[1:]):
        if d0 < dice <= d1:
            t = (dice - d0) / (d1 - d0)
            return float(math.exp(math.log(n0) + t * (math.log(n1) - math.log(n0)))), INTERPOLATED
    return math.inf, ABOVE


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _matrices(rows: Sequence[Mapping[str, Any]], part: str, metric: str
              ) -> tuple[list[int], list[str], dict[tuple[str, int], np.ndarray]]:
    """Seeds, cases and one ``(seeds, cases)`` matrix per (model, annotated cases), NaN where missing."""
    use = [r for r in rows if r.get("part") == part]
    seeds = sorted({int(r["seed"]) for r in use})
    cases = sorted({str(r["case_id"]) for r in use})
    out: dict[tuple[str, int], np.ndarray] = {}
    for r in use:
        key = (str(r["model"]), int(r["annotated_cases"]))
        m = out.setdefault(key, np.full((len(seeds), len(cases)), np.nan))
        m[seeds.index(int(r["seed"])), cases.index(str(r["case_id"]))] = _number(r.get(metric))
    return seeds, cases, out


def dice_curves(rows: Sequence[Mapping[str, Any]], part: str = "test", metric: str = "dice"
                ) -> dict[str, dict[int, dict[str, Any]]]:
    """Model -> annotated cases -> ``{"mean", "seed_means", "n_seeds", "n_cases"}``: the mean over
    every (seed, case) and the per-seed means over cases (the band)."""
    seeds, _, mats = _matrices(rows, part, metric)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for (model, n), m in sorted(mats.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        with np.errstate(all="ignore"):
            per_seed = {s: float(np.nanmean(m[i])) for i, s in enumerate(seeds) if np.isfinite(m[i]).any()}
        finite = m[np.isfinite(m)]
        out.setdefault(model, {})[n] = {
            "mean": float(finite.mean()) if finite.size else math.nan, "seed_means": per_seed,
            "n_seeds": len(per_seed), "n_cases": int(np.isfinite(m).any(axis=0).sum())}
    return out


def _saved(curve: Sequence[tuple[float, float]], dice: float, n: int) -> tuple[float, float, str]:
    cases, status = equivalent_cases(curve, dice)
    return cases, cases - n, status


def cases_saved(rows: Sequence[Mapping[str, Any]], scratch: str, models: Sequence[str], *, part: str = "test",
                n_boot: int = 10000, seed: int = 0, level: float = 0.95) -> list[dict[str, Any]]:
    """Annotated cases saved by each model at each of its budgets (see the module docstring).

    Args:
        rows: per-case rows with ``model``, ``annotated_cases``, ``seed``, ``case_id``, ``part``, ``dice``.
        scratch: the model trained from scratch (its curve is the yardstick).
        models: the models to express in scratch's cases.
        n_boot, seed, level: the bootstrap.

    Returns:
        One dict per (model, annotated cases): ``model``, ``annotated_cases``, ``dice`` (mean),
        ``scratch_cases`` (``n*``), ``saved`` (``n* - n``), ``status``, ``ci_low``/``ci_high``
        of ``saved`` (infinite for an open bound, NaN without an interval), ``ci_note``,
        ``share_not_reached``/``share_below`` of the resamples, ``n_seeds``, ``n_cases``.
    """
    seeds, cases, mats = _matrices(rows, part, "dice")
    budgets = sorted({n for m, n in mats if m == scratch})
    keys = [(m, n) for m in models for n in sorted({k for mm, k in mats if mm == m})]
    if not budgets or not keys:
        return []
    stack_keys = [(scratch, n) for n in budgets] + keys
    stack = np.stack([mats[k] for k in stack_keys])  # (K, seeds, cases)

    def means(arr: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return np.nanmean(arr.reshape(arr.shape[0], -1), axis=1)

    def saved_all(mu: np.ndarray) -> list[tuple[float, float, str]]:
        curve = list(zip(budgets, mu[:len(budgets)]))
        return [_saved(curve, float(mu[len(budgets) + i]), n) for i, (_, n) in enumerate(keys)]

    point = saved_all(means(stack))
    enough = len(cases) >= BOOTSTRAP_MIN_CASES
    draws = np.full((n_boot if enough else 0, len(keys)), np.nan)
    if enough:
        rng = np.random.default_rng(seed)
        for b in range(n_boot):
            s_idx = rng.integers(0, len(seeds), len(seeds))
            c_idx = rng.integers(0, len(cases), len(cases))
            draws[b] = [v[1] for v in saved_all(means(stack[:, s_idx][:, :, c_idx]))]
    alpha = (1.0 - level) / 2.0
    out = []
    for i, (model, n) in enumerate(keys):
        m = mats[(model, n)]
        finite = m[np.isfinite(m)]
        entry: dict[str, Any] = {
            "model": model, "annotated_cases": int(n), "dice": float(finite.mean()) if finite.size else math.nan,
            "scratch_cases": point[i][0], "saved": point[i][1], "status": point[i][2],
            "n_seeds": int(np.isfinite(m).any(axis=1).sum()), "n_cases": int(np.isfinite(m).any(axis=0).sum()),
            "ci_low": math.nan, "ci_high": math.nan, "share_not_reached": math.nan, "share_below": math.nan,
            "ci_note": f"no interval: fewer than {BOOTSTRAP_MIN_CASES} test cases" if not enough else ""}
        values = draws[:, i][~np.isnan(draws[:, i])]
        if values.size:
            entry.update(ci_low=float(np.quantile(values, alpha, method="lower")),
                         ci_high=float(np.quantile(values, 1.0 - alpha, method="higher")),
                         share_not_reached=float(np.mean(np.isposinf(values))),
                         share_below=float(np.mean(np.isneginf(values))))
            if entry["n_seeds"] < 2:
                entry["ci_note"] = "one seed: the interval resamples cases only"
        out.append(entry)
    return out


# ------------------------------------------------------------------------------------------ figure
def label_curve_figure(curves: Mapping[str, Mapping[int, Mapping[str, Any]]], total_cases: int | None = None
                       ) -> "Figure":
    """Mean test Dice against annotated cases (log x axis), one line per model with a min-max band
    over the seeds' means (:func:`dice_curves` output). :func:`curve_labels` reads its lines."""
    from kidneyssl.reporting.figures import model_colours, new_figure

    colours = model_colours(list(curves))
    fig = new_figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    ticks: set[int] = set()
    for model, by_n in curves.items():
        ns = sorted(by_n)
        ticks.update(ns)
        mean = np.array([by_n[n]["mean"] for n in ns])
        seed_means = [list(by_n[n]["seed_means"].values()) for n in ns]
        n_seeds = max((len(v) for v in seed_means), default=0)
        if n_seeds > 1:
            low = np.array([min(v) if v else np.nan for v in seed_means])
            high = np.array([max(v) if v else np.nan for v in seed_means])
            ax.fill_between(ns, low, high, color=colours[model], alpha=0.15, linewidth=0)
        ax.plot(ns, mean, color=colours[model], marker="o", linewidth=2.0,
                label=f"{model} (mean of {n_seeds} seed{'' if n_seeds == 1 else 's'}"
                      f"{', band: min-max' if n_seeds > 1 else ''})")
    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(sorted(ticks))
        ax.set_xticklabels([str(t) for t in sorted(ticks)])
        ax.minorticks_off()
    ax.set_xlabel("annotated training cases" + (f" (of {total_cases})" if total_cases else "") + ", log scale")
    ax.set_ylabel("test Dice")
    ax.set_title("Test Dice against the number of annotated cases")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def curve_labels(fig: "Figure") -> list[str]:
    """The model of each line of :func:`label_curve_figure` (the legend's text up to ``" ("``)."""
    return [str(line.get_label()).split(" (", 1)[0] for line in fig.axes[0].get_lines()]


# ------------------------------------------------------------------------------------------ report
def _f(x: float, digits: int = 3) -> str:
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _cases_text(e: Mapping[str, Any], n_max: int, n_min: int) -> tuple[str, str]:
    """(scratch needs, cases saved [interval]) in words."""
    n = int(e["annotated_cases"])
    if e["status"] == ABOVE:
        needs, saved = f"not reached (> {n_max})", f"> {n_max - n}"
    elif e["status"] == BELOW:
        needs, saved = f"below the curve (< {n_min})", f"< {n_min - n}"
    elif e["status"] == INTERPOLATED:
        needs, saved = f"{e['scratch_cases']:.1f}", f"{e['saved']:+.1f}"
    else:
        return "–", "–"

    def bound(v: float) -> str:
        return ("not reached" if v == math.inf else "below the curve" if v == -math.inf
                else f"{v:+.1f}" if math.isfinite(v) else "–")

    if not math.isnan(e["ci_low"]):
        saved += f" [{bound(e['ci_low'])}, {bound(e['ci_high'])}]"
    if e.get("ci_note"):
        saved += f" ({e['ci_note']})"
    return needs, saved


def _cost_cells(cost: Mapping[int, Mapping[str, Any]], part: str) -> tuple[float, str]:
    """Mean device-seconds of ``part`` (``pretrain``/``finetune``) over seeds, and the device(s)."""
    values = [float(c[part]["device_seconds"]) for c in cost.values() if c.get(part, {}).get("device_seconds")
              is not None]
    devices = sorted({str(c[part].get("device")) for c in cost.values() if c.get(part)})
    return (float(np.mean(values)) if values else math.nan), ", ".join(devices)


def write_label_fraction_report(out_dir: str | Path, rows: Sequence[Mapping[str, Any]], *, scratch: str,
                                models: Sequence[str], budgets: Mapping[int, str],
                                cost: Mapping[str, Mapping[int, Mapping[int, Mapping[str, Any]]]] | None = None,
                                shared_pretraining: Sequence[str] = (), config: Mapping[str, Any] | None = None,
                                n_boot: int = 10000) -> tuple[Path, dict[str, Any]]:
    """Write the label-fraction report into ``out_dir`` (see the module docstring).

    Args:
        rows: per-case rows of every model and budget (``model``, ``annotated_cases``, ``seed``,
            ``case_id``, ``part``, ``dice``).
        scratch: the model from scratch; models: the pretrained ones (fine-tuned), in order.
        budgets: annotated cases -> how the budget was asked for (``25 % (5 cases)``).
        cost: model -> annotated cases -> seed -> ``{"pretrain": compute, "finetune": compute}``
            (``compute`` entries of ``experiment.json``).
        shared_pretraining: models whose one pretraining per seed serves every budget.
        config: the experiment's config (``protocol.min_seeds_for_verdict`` / ``min_cases_for_verdict``).

    Returns:
        ``(out_dir / "label_fractions.md", result)``; ``result`` (also ``label_fractions.json``)
        holds ``curves``, ``differences``, ``cases_saved``, ``cost`` and ``rule``.
    """
    from kidneyssl.config import ProtocolConfig
    from kidneyssl.io.atomic import atomic_write_json, atomic_write_text
    from kidneyssl.reporting.figures import save_figure
    from kidneyssl.reporting.report import render_html, render_markdown, verdict_rule
    from kidneyssl.reporting.statistics import compare_methods

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    protocol = dict((config or {}).get("protocol") or {})
    defaults = ProtocolConfig()
    min_seeds = int(protocol.get("min_seeds_for_verdict", defaults.min_seeds_for_verdict))
    min_cases = int(protocol.get("min_cases_for_verdict", defaults.min_cases_for_verdict))
    cost = cost or {}
    test = [r for r in rows if r.get("part") == "test"]
    present = [m for m in [scratch, *models] if any(r["model"] == m for r in test)]
    curves = dice_curves(test)
    curves = {m: curves[m] for m in present if m in curves}
    ns = sorted({int(r["annotated_cases"]) for r in test})
    n_max, n_min = (max(ns), min(ns)) if ns else (0, 0)

    named = [{**r, "model": f"{r['model']}@{int(r['annotated_cases'])}"} for r in test]
    pairs = [(f"{m}@{n}", f"{scratch}@{n}") for n in ns for m in models if m in curves and n in curves[m]]
    diffs = compare_methods(named, pairs, ("dice",), ("test",), min_seeds=min_seeds, min_cases=min_cases,
                            n_boot=n_boot)
    for d in diffs:
        d["base_model"], d["annotated_cases"] = d["model"].rsplit("@", 1)[0], int(d["model"].rsplit("@", 1)[1])
    saved = cases_saved(test, scratch, [m for m in models if m in curves], n_boot=n_boot)
    cost_rows = []
    for m in [scratch, *models]:
        for n in sorted(cost.get(m, {})):
            pre, device = _cost_cells(cost[m][n], "pretrain")
            fine, fine_device = _cost_cells(cost[m][n], "finetune")
            cost_rows.append({"model": m, "annotated_cases": n, "pretrain_device_seconds": pre,
                              "finetune_device_seconds": fine, "device": device or fine_device,
                              "pretraining_shared_by_budgets": m in shared_pretraining})
    rule = verdict_rule(min_seeds, min_cases)
    result: dict[str, Any] = {"curves": curves, "differences": diffs, "cases_saved": saved, "cost": cost_rows,
              "budgets": {str(n): label for n, label in budgets.items()},
              "rule": rule}
    atomic_write_json(out / "label_fractions.json", result)

    fig = label_curve_figure(curves, total_cases=n_max)
    save_figure(fig, out / FIGURE_NAME)
    images = {FIGURE_NAME: (out / FIGURE_NAME).read_bytes()}
    blocks: list[tuple[str, Any]] = [
        ("h1", "How many annotated cases is pretraining worth?"),
        ("p", "Every model fine-tuned on nested subsets of the training cases (the label budgets: "
              + ", ".join(f"{budgets.get(n, n)}" for n in ns) + "), same settings, validation and test cases; "
              "the subsets are drawn per seed (method and scratch of one seed share theirs), balanced by the "
              "number of kidneys and recorded in `split.json`. A method that reads masks (the side proxy) "
              "pretrains on each budget's masks only, the other training images located by that budget's scratch "
              "model; an image-only method pretrains once per seed on all training images. Test Dice is the "
              "experiment's scoring (original grid, last checkpoint). Same settings means the same number of "
              "epochs, so a smaller budget also takes fewer optimiser steps (two half volumes per case per "
              "epoch): the curves measure labels and training length together, alike for every method."),
        ("img", (FIGURE_NAME, "Test Dice against annotated cases (log scale): mean over seeds and test cases, band "
                              "from the lowest to the highest seed's mean")),
        ("h2", "Each method − scratch, per budget (test Dice)"),
        ("p", rule + f" One Holm family: {len(diffs)} comparisons (every budget x method)."),
        ("table", (["annotated cases", "comparison", "mean difference [95 % interval]", "interval", "p",
                    "Holm-adjusted p", "cases x seeds", "conclusion"],
                   [[budgets.get(d["annotated_cases"], str(d["annotated_cases"])),
                     f"{d['base_model']} − {scratch}",
                     f"{_f(d['mean'])} [{_f(d['ci_low'])}, {_f(d['ci_high'])}]", d["interval"],
                     _f(d["p_value"], 3), _f(d["p_holm"], 3), f"{d['n_cases']} x {d['n_seeds']}",
                     d["conclusion"]] for d in diffs])),
        ("h2", "Annotated cases saved, and what the pretraining cost"),
        ("p", "For each method and budget n: the annotated cases n* with which scratch reaches the method's mean "
              "test Dice (scratch's curve interpolated linearly in log(cases); nothing is extrapolated beyond its "
              "smallest and largest budget), and the cases saved n* − n with a 95 % bootstrap interval (seeds and "
              "test cases resampled, both curves and the interpolation recomputed; an open bound reads not "
              "reached / below the curve). Pretraining device-seconds are the mean over seeds of each method's "
              "pretraining stage (wall time x devices): "
              + (f"{', '.join(shared_pretraining)} pretrain once per seed for every budget (the same cost on "
                 "each row); " if shared_pretraining else "")
              + "the side proxy pretrains per budget, its time including locating the other training images "
                "with the budget's scratch model (trained anyway, its cost on scratch's row)."),
        ("table", (["method", "annotated cases", "mean test Dice", "scratch needs (cases)",
                    "cases saved [95 % interval]", "pretraining device-h", "fine-tuning device-h", "device"],
                   _saved_rows(saved, cost_rows, budgets, scratch, curves, n_max, n_min))),
    ]
    atomic_write_text(out / "label_fractions.html", render_html(blocks, images, "label fractions"))
    report = out / "label_fractions.md"
    atomic_write_text(report, render_markdown(blocks))
    return report, result


def _saved_rows(saved: Sequence[Mapping[str, Any]], cost_rows: Sequence[Mapping[str, Any]], budgets: Mapping[int, str],
                scratch: str, curves: Mapping[str, Mapping[int, Mapping[str, Any]]], n_max: int,
                n_min: int) -> list[list[str]]:
    def hours(model: str, n: int, key: str) -> tuple[str, str]:
        c = next((c for c in cost_rows if c["model"] == model and c["annotated_cases"] == n), None)
        if c is None:
            return "–", ""
        return (f"{c[key] / 3600:.3f}" if math.isfinite(c[key]) else "–"), str(c["device"])

    body = []
    for n, entry in sorted(curves.get(scratch, {}).items()):
        fine, device = hours(scratch, n, "finetune_device_seconds")
        body.append([scratch, budgets.get(n, str(n)), _f(entry["mean"]), "(the yardstick)", "0", "–", fine, device])
    for e in saved:
        needs, cases = _cases_text(e, n_max, n_min)
        pre, device = hours(e["model"], e["annotated_cases"], "pretrain_device_seconds")
        fine, _ = hours(e["model"], e["annotated_cases"], "finetune_device_seconds")
        body.append([e["model"], budgets.get(e["annotated_cases"], str(e["annotated_cases"])), _f(e["dice"]), needs,
                     cases, pre, fine, device])
    return body
