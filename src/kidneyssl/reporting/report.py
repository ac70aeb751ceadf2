"""The experiment report: Table 1, Fig. 4, Fig. 5 and a Markdown + self-contained HTML page.

:func:`write_experiment_report` writes into ``out_dir``:

* ``table1.csv`` - one row per (model, metric): mean, sd, n (cases with a finite value), n_missed
  (cases where the metric is undefined, e.g. HD of an empty prediction), the paper's value;
* ``table1.md`` - the same in the paper's layout (metrics x models, mean ± sd) beside the paper's values;
* ``fig4_overlays.png`` (when overlay cases are given) and ``fig5_dice_curves.png``;
* ``report.md`` and ``report.html`` (images embedded as base64: one file that can be mailed).

Both documents are rendered from one list of blocks, so they always say the same thing.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import logging
import math
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from kidneyssl.config import PROXY_INPUTS, ProtocolConfig
from kidneyssl.io.atomic import atomic_write_text
from kidneyssl.reporting.figures import OverlayCase, plot_overlays
from kidneyssl.reporting.statistics import BOOTSTRAP_MIN_CASES, format_p
from kidneyssl.reporting.tables import DIGITS, METRIC_LABELS, format_value, metric_cell

__all__ = [
    "TABLE1_METRICS",
    "TABLE1_COLUMNS",
    "PAPER_TABLE1",
    "table1_rows",
    "write_table1_csv",
    "table1_markdown",
    "write_experiment_report",
    "verdict_rule",
    "DEFAULT_BASELINES",
    "COMPARED_METRICS",
    "INTERVAL_WORDS",
    "Block",
    "render_markdown",
    "render_html",
    "format_seconds",
    "compute_table",
]

log = logging.getLogger(__name__)

# (row key in the per-case metric rows, column label): the labels of reporting.tables.
TABLE1_METRICS: tuple[tuple[str, str], ...] = tuple(
    (key, METRIC_LABELS[key]) for key in ("dice", "hd_mm", "hd95_mm", "bl_pct", "nhd"))
TABLE1_COLUMNS: tuple[str, ...] = (
    "model", "metric", "label", "mean", "sd", "n", "n_missed", "n_cases", "paper_value",
)
# Validation values of the paper's Table 1 (DC and BL). Its "HD" column (0.303 MwoS / 0.291 MwS) has
# no unit that can be reconstructed (see NHD_NOTE), so it is quoted in the text, not set beside a row.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "MwoS": {"dice": 0.907, "bl_pct": 14.0},
    "MwS": {"dice": 0.931, "bl_pct": 12.9},
}
PAPER_HD = {"MwoS": 0.303, "MwS": 0.291}


def _paper_name(model: str) -> str:
    """The paper's model a name of ours corresponds to (``MwS-region`` -> ``MwS``)."""
    return model.split("-", 1)[0]
FIG4_NAME = "fig4_overlays.png"
#: References of the default comparisons: scratch (MwoS), then the paper's MwS (whole region).
DEFAULT_BASELINES: tuple[str, ...] = ("MwoS", "MwS-region")
#: Metrics of the paired comparisons.
COMPARED_METRICS: tuple[str, ...] = ("dice", "hd95_mm")
FIG5_NAME = "fig5_dice_curves.png"


# ----------------------------------------------------------------------------------------- Table 1
def table1_rows(per_case: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Table 1 as rows with :data:`TABLE1_COLUMNS`, one per (model, metric).

    Args:
        per_case: model name -> per-case metric rows (keys ``dice, hd_mm, hd95_mm, bl_pct, nhd``;
            a missing key, ``None``, NaN or inf is a missed value).

    Returns:
        Rows in model order, then metric order: ``mean`` and ``sd`` (sample sd, ddof=1; NaN for fewer
        than two values) over the cases with a finite value, ``n`` those cases, ``n_missed`` the others,
        ``n_cases`` all cases, ``paper_value`` the paper's validation value or NaN.
    """
    from kidneyssl.metrics import (
        summarize,  # mean/sd over finite values, NaN counted in n_nan
    )

    rows = []
    for model, cases in per_case.items():
        summary = summarize(list(cases))
        for key, label in TABLE1_METRICS:
            stats = summary[key]
            rows.append({
                "model": model, "metric": key, "label": label, "mean": stats["mean"], "sd": stats["sd"],
                "n": stats["n"], "n_missed": stats["n_nan"], "n_cases": summary["n_cases"],
                "paper_value": PAPER_TABLE1.get(_paper_name(model), {}).get(key, math.nan),
            })
    return rows


def write_table1_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Write :func:`table1_rows` output as CSV (atomic); floats with full precision, NaN as ``nan``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(TABLE1_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(float(row[k])) if isinstance(row[k], float) else row[k]) for k in TABLE1_COLUMNS})
    _write_text(Path(path), buffer.getvalue())
    return Path(path)


def _write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


_fmt = format_value


def _table1_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    paper_models = list(dict.fromkeys(_paper_name(m) for m in models if _paper_name(m) in PAPER_TABLE1))
    header = ["Metric"] + models + [f"paper {m}" for m in paper_models]
    body = []
    for key, label in TABLE1_METRICS:
        line = [label]
        for model in models:
            r = next(r for r in rows if r["model"] == model and r["metric"] == key)
            line.append(metric_cell({"mean": r["mean"], "sd": r["sd"], "n": r["n"], "n_nan": r["n_missed"]},
                                    int(r["n_cases"]), DIGITS[key]))
        for model in paper_models:
            line.append(_fmt(PAPER_TABLE1[model].get(key, math.nan), DIGITS[key]))
        body.append(line)
    return header, body


def table1_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Table 1 in the paper's layout (metrics down, models across, mean ± sd (n)) as Markdown."""
    header, body = _table1_cells(rows)
    return _md_table(header, body)


# ------------------------------------------------------------------------------- document blocks
# A block is (kind, payload): ("h1"|"h2"|"p", text), ("ul", [text]), ("table", (header, body)),
# ("img", (file name, caption)), ("pre", text), ("details", (summary, text)).
Block = tuple[str, Any]


def _md_table(header: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
    return "\n".join(lines) + "\n"


def render_markdown(blocks: Sequence[Block]) -> str:
    """The blocks as Markdown (``report.md``)."""
    out = []
    for kind, payload in blocks:
        if kind == "h1":
            out.append(f"# {payload}\n")
        elif kind == "h2":
            out.append(f"## {payload}\n")
        elif kind == "p":
            out.append(f"{payload}\n")
        elif kind == "ul":
            out.append("".join(f"- {item}\n" for item in payload))
        elif kind == "table":
            out.append(_md_table(*payload))
        elif kind == "img":
            name, caption = payload
            out.append(f"![{caption}]({name})\n\n*{caption}*\n")
        elif kind == "pre":
            out.append(f"```\n{payload.rstrip()}\n```\n")
        elif kind == "details":
            summary, text = payload
            out.append(f"<details><summary>{summary}</summary>\n\n```yaml\n{text.rstrip()}\n```\n\n</details>\n")
    return "\n".join(out)


def _inline_html(text: str) -> str:
    text = html.escape(str(text), quote=False)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


_CSS = """body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:left}
th{background:#eee}img{max-width:100%}pre{background:#f6f6f6;padding:.8em;overflow-x:auto}
figcaption{font-style:italic;color:#555}"""


def render_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str) -> str:
    """The blocks as one self-contained HTML page, images embedded (``report.html``)."""
    out = [f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
           f"<style>{_CSS}</style></head><body>"]
    for kind, payload in blocks:
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{_inline_html(payload)}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in payload) + "</ul>")
        elif kind == "table":
            header, body = payload
            rows = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>" for r in body)
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in header)
            out.append(f"<table><tr>{head}</tr>{rows}</table>")
        elif kind == "img":
            name, caption = payload
            data = base64.b64encode(images[name]).decode("ascii")
            out.append(f"<figure><img alt=\"{html.escape(caption)}\" src=\"data:image/png;base64,{data}\">"
                       f"<figcaption>{_inline_html(caption)}</figcaption></figure>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(payload)}</pre>")
        elif kind == "details":
            summary, text = payload
            out.append(f"<details><summary>{_inline_html(summary)}</summary><pre>{html.escape(text)}</pre></details>")
    out.append("</body></html>\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------- report body
def _config_summary(config: Mapping[str, Any]) -> list[str]:
    """Key settings of a ``config_to_dict(ExperimentConfig)`` dict, those present only."""
    picks = [
        ("name", "preset"), ("preprocess.spacing_mm", "voxel spacing (mm, z y x)"),
        ("preprocess.window_hu", "HU window"), ("pretrain.crop_size", "kidney crop (voxels)"),
        ("pretrain.val_fraction", "proxy validation fraction (of the training cases)"),
        ("protocol.test_fraction", "test fraction"), ("protocol.split_seed", "split seed"),
        ("train.pos_weight", "BCE positive weight"),
        ("model.init_features", "initial features"), ("model.growth_rate", "growth rate"),
        ("model.block_layers", "dense block layers"), ("model.reconstruction", "reconstruction branch"),
        ("pretrain.epochs", "siamese pretraining epochs"), ("pretrain.pairs_per_epoch", "pairs per epoch"),
        ("pretrain.margin", "contrastive margin"), ("train.epochs", "segmentation epochs"),
        ("train.lr", "learning rate (Adam)"), ("train.weight_decay", "weight decay"),
        ("train.batch_size", "batch size"), ("train.val_fraction", "validation fraction"),
    ]
    items = []
    for dotted, label in picks:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            value = ", ".join(str(v) for v in node) if isinstance(node, (list, tuple)) else node
            items.append(f"{label}: `{value}`")
    train = config.get("train") if isinstance(config.get("train"), Mapping) else None
    if train and "bce_weight_start" in train:
        start = f"{train.get('bce_weight_start')}/{train.get('dice_weight_start')}"
        end = f"{train.get('bce_weight_end')}/{train.get('dice_weight_end')}"
        items.append(f"BCE/Dice weights: `{start}` at the first epoch to `{end}` at the last")
    return items


def format_seconds(value: Any) -> str:
    """``12.3 s (0:00:12)``; ``–`` when not a finite number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(seconds):
        return "–"
    return f"{seconds:.1f} s ({_dt.timedelta(seconds=round(seconds))})"


def _case_counts(per_case: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[list[str], list[list[str]]]:
    header = ["Model", "cases", "empty prediction (missed)", "empty ground truth", "missed cases"]
    body = []
    for model, cases in per_case.items():
        missed = [str(c.get("case_id", f"#{i}")) for i, c in enumerate(cases)
                  if bool(c.get("empty_pred")) and not bool(c.get("empty_gt"))]
        body.append([model, str(len(cases)), str(sum(bool(c.get("empty_pred")) for c in cases)),
                     str(sum(bool(c.get("empty_gt")) for c in cases)), ", ".join(missed) or "none"])
    return header, body


NHD_NOTE = (
    "**Normalised HD** is NOT the paper's HD column, and the paper's HD values (0.303 MwoS / 0.291 MwS) "
    "cannot be reproduced: their unit cannot be reconstructed. The authors' `getHausdorff` passes "
    "`np.where(...)` tuples (3 x N coordinate arrays) to scipy's `directed_hausdorff`, which then treats the "
    "3 coordinate axes as points in N dimensions and takes the symmetric maximum over those; that is not a "
    "surface distance, and its call is commented out in their code. Our `nhd` column is one reading of the "
    "text (the directed Hausdorff distance in voxels over the number of predicted voxels), kept for "
    "completeness only. **HD and HD95 in mm** (symmetric surface distances on the original grid) are the "
    "real distance columns."
)


def _fmt_diff(x: float, digits: int) -> str:
    """A difference: fixed decimals (no scientific notation beside its interval), ``–`` if undefined."""
    return f"{x:.{digits}f}" if math.isfinite(x) else "–"


def _fmt_ci(stats: Mapping[str, Any], digits: int) -> str:
    return (f"{_fmt_diff(stats['mean'], digits)} [{_fmt_diff(stats['ci_low'], digits)}, "
            f"{_fmt_diff(stats['ci_high'], digits)}]")


#: What each interval / test of :func:`kidneyssl.reporting.statistics.paired_differences` is, in words.
INTERVAL_WORDS = {"bootstrap": "95 % bootstrap interval (seeds and cases resampled)",
                  "t": "95 % t-interval over the case means (too few cases for a bootstrap)"}


def _test_words(d: Mapping[str, Any]) -> str:
    """``bootstrap p = 0.01`` / ``sign-flip exact p = 0.125 over 4 case means``."""
    if d.get("test") == "bootstrap":
        return f"bootstrap {format_p(d)}"
    return f"{d.get('test', 'sign-flip')} {format_p(d)} over {d['n_cases']} case means"


def _digits(metric: str) -> int:
    return DIGITS.get(metric, 3)


def _favour(d: Mapping[str, Any]) -> str:
    """``better for model / better for reference`` pair counts (higher Dice, lower distances)."""
    return f"{d['wins']} / {d['losses']}" if d.get("higher_is_better", True) else f"{d['losses']} / {d['wins']}"


def verdict_rule(min_seeds: int, min_cases: int) -> str:
    """The rule for stating a direction, in words (report and ``differences.json``)."""
    return (f"A direction (better/worse) is stated only with at least {min_seeds} seeds and {min_cases} paired "
            "cases, when the 95 % interval excludes 0 and the p-value, Holm-corrected for the number of "
            "comparisons made, is below 0.05; below those numbers the differences are shown without a conclusion "
            "(protocol.min_seeds_for_verdict, protocol.min_cases_for_verdict).")


def _family_words(family: Mapping[str, int]) -> str:
    parts = [f"{n} on the {'test' if p == 'test' else 'validation'} cases" for p, n in family.items() if n]
    if not parts:
        return ""
    return ("Comparisons made (each model pair x metric; each part corrected on its own, Holm): "
            + ", ".join(parts) + ".")


def _protocol(config: Mapping[str, Any]) -> Mapping[str, Any]:
    section = config.get("protocol")
    return section if isinstance(section, Mapping) else {}


def _method_name(label: str) -> str:
    """A pretraining history's label as a method (earlier runs named the side proxy's by its input)."""
    return f"side-{label}" if label in PROXY_INPUTS else str(label)


def _run_contents(rows: Sequence[Mapping[str, Any]], models: Sequence[str], seeds: Sequence[int],
                  proxy_histories: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """What the report's numbers come from, derived from its rows (every seed and model they hold,
    every pretraining method run), not from one run's config: a combined report names them all."""
    protocol = _protocol(config)
    items = [f"seeds in these results: `{', '.join(str(s) for s in seeds) or 'none'}`",
             f"models compared: `{', '.join(models) or 'none'}`"]
    configured = [str(m) for m in protocol.get("methods") or []] or \
        [f"side-{v}" for v in protocol.get("proxy_variants") or []]
    pretrained = [_method_name(p) for p in proxy_histories] or configured
    if pretrained:
        items.append(f"pretraining methods: `{', '.join(pretrained)}`")
    shown: dict[str, list[Any]] = {"seeds": [int(s) for s in protocol.get("seeds") or []], "methods": configured}
    # (a pretraining history such as "side-region+U", with extra scans, is no protocol method)
    found: dict[str, list[Any]] = {"seeds": list(seeds), "methods": [p for p in pretrained if not p.endswith("+U")]}
    differ = [f"{k} `{', '.join(str(v) for v in shown[k])}`" for k in shown
              if shown[k] and proxy_histories and sorted(shown[k]) != sorted(found[k])]
    if differ:
        items.append("the configuration below is one run's (" + "; ".join(differ) + "); these results combine "
                     "several runs")
    return items


def _budget_table(budgets: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Each pretraining method's budget, so that unequal budgets are visible beside its results."""
    header = ["Pretraining method", "optimiser steps", "samples seen", "device-seconds", "device", "seeds"]
    body = [[_method_name(name), _fmt(b.get("optimizer_steps", math.nan), 0), _fmt(b.get("samples_seen", math.nan), 0),
             _fmt(b.get("device_seconds", math.nan), 0), str(b.get("device", "?")), str(b.get("seeds", "?"))]
            for name, b in budgets.items()]
    return header, body


def _seed_table(rows: Sequence[Mapping[str, Any]], models: Sequence[str],
                seeds: Sequence[int]) -> tuple[list[str], list[list[str]]]:
    from kidneyssl.reporting.statistics import seed_means

    header = ["Model"] + [f"seed {s}: val / test Dice" for s in seeds] + ["mean ± sd over seeds (test)"]
    body = []
    for model in models:
        val, test = seed_means(rows, model, "dice", "val"), seed_means(rows, model, "dice", "test")
        cells = [f"{_fmt(val.get(s, math.nan), 3)} / {_fmt(test.get(s, math.nan), 3)}" for s in seeds]
        t = np.array([v for v in test.values() if math.isfinite(v)])
        sd = float(t.std(ddof=1)) if t.size >= 2 else math.nan
        body.append([model, *cells, f"{_fmt(float(t.mean()) if t.size else math.nan, 3)} ± {_fmt(sd, 3)}"])
    return header, body


def _convergence(histories: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
                 reference: str = "MwoS") -> tuple[list[str], list[list[str]], dict[str, Any]]:
    """Epochs to reach 90 % / 95 % of the final validation Dice of ``reference`` (per seed)."""
    from kidneyssl.reporting.statistics import epochs_to_reach

    header = ["Model", "epochs to 90 % of final MwoS Dice (per seed)", "epochs to 95 % (per seed)"]
    body, data = [], {}
    ref = histories.get(reference, {})
    for model, by_seed in histories.items():
        cells, entry = [], {}
        for frac in (0.9, 0.95):
            per_seed = {}
            for seed, rows in by_seed.items():
                ref_rows = ref.get(seed) or []
                final = float(ref_rows[-1]["val_dice"]) if ref_rows else math.nan
                per_seed[seed] = epochs_to_reach(rows, frac * final) if math.isfinite(final) else None
            reached = [v for v in per_seed.values() if v is not None]
            mean = f"{np.mean(reached):.1f}" if reached else "never"
            cells.append(f"{mean} ({', '.join('–' if v is None else str(v) for v in per_seed.values())})")
            entry[f"{int(frac * 100)}pct"] = per_seed
        body.append([model, *cells])
        data[model] = entry
    return header, body, data


def _unlabeled_text(unlabeled: Mapping[int, Mapping[str, Any]]) -> str:
    """The paragraph that says what MwS+U was pretrained on, per seed."""
    parts = []
    for seed, rec in sorted(unlabeled.items()):
        kidneys = rec.get("kidneys", {})
        parts.append(f"seed {seed}: {rec.get('used', '?')} of {rec.get('scans', '?')} scans used "
                     f"({kidneys.get('right', '?')} right, {kidneys.get('left', '?')} left kidneys; "
                     f"{rec.get('below_confidence', '?')} below confidence, {rec.get('no_kidney', '?')} without kidney)")
    conf = next(iter(unlabeled.values())).get("min_confidence", "?")
    return ("**MwS+U** is pretrained like the first MwS variant on the training cases plus scans without masks, "
            "whose kidneys were located by the same seed's MwoS (trained on the training cases only, so the "
            f"locator never saw a validation or test case); scans with confidence >= {conf} are used. "
            + "; ".join(parts) + ".")


def write_experiment_report(
    out_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    histories: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
    proxy_histories: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
    overlays: Sequence[OverlayCase],
    config: Mapping[str, Any],
    timings: Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    title: str = "kidneyssl experiment report",
    unlabeled: Mapping[int, Mapping[str, Any]] | None = None,
    comparisons: Sequence[tuple[str, str]] | None = None,
    baselines: Sequence[str] = DEFAULT_BASELINES,
    metrics: Sequence[str] = COMPARED_METRICS,
    notes: Sequence[str] = (),
    budgets: Mapping[str, Mapping[str, Any]] | None = None,
    compute: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the experiment's report folder.

    Args:
        out_dir: report folder (created).
        rows: per-case metric rows (``kidneyssl.metrics.compute_case_metrics``) with ``seed``,
            ``model`` (``MwoS``, ``MwS-region``, ...), ``part`` (``val``/``test``), ``case_id`` and
            optionally ``strategy``.
        histories: model -> seed -> segmentation history rows (``epoch``, ``val_dice``, ...).
        proxy_histories: proxy variant -> seed -> pretraining history rows (``val_accuracy``).
        overlays: up to 3 cases for Fig. 4 (may be empty: the figure is then left out).
        config: ``config_to_dict(ExperimentConfig)`` of the run.
        timings: stage name -> seconds.
        split: ``{"train", "val", "test"}`` case counts (and ``test_source``).
        unlabeled: seed -> the ``unlabeled`` record of that seed's MwS+U pretraining run (scans,
            used, kidneys found, minimum confidence), when the experiment had unlabeled scans.
        comparisons: ``(model, reference)`` pairs to compare, any model names; default: every
            model against each of ``baselines`` present in the rows
            (:func:`kidneyssl.reporting.statistics.comparison_pairs`).
        baselines: the references of the default comparisons (scratch, then the paper's MwS).
        metrics: metric row keys compared (each comparison x metric x part is one test).
        notes: sentences shown in bold at the top of the result (e.g. what a demo can and cannot
            show, from the command that ran it).
        budgets: pretraining method -> its budget (means over seeds of ``optimizer_steps``,
            ``samples_seen``, ``device_seconds``; ``device``; ``seeds``), shown as a table.
        compute: stage -> ``{"wall_seconds", "devices", "device_seconds", "device"}`` (the
            experiment's ``compute``); shown instead of ``timings`` when given.

    The thresholds for stating a direction are ``config["protocol"]["min_seeds_for_verdict"]``
    and ``["min_cases_for_verdict"]`` (defaults of :class:`kidneyssl.config.ProtocolConfig`);
    see :func:`kidneyssl.reporting.statistics.compare_methods` for the rule.

    Returns:
        ``(out_dir / "report.md", differences)``: ``differences`` holds ``paired`` (one
        :func:`~kidneyssl.reporting.statistics.compare_methods` dict per part x comparison x
        metric, with its ``verdict`` and ``conclusion``), ``n_comparisons`` (the Holm family size
        per part), ``rule`` (the rule in words) and the convergence numbers, also written as
        ``differences.json``. ``report.html``, ``table1.csv``, ``table1.md`` and the figures are
        beside the report. Every file is written atomically.
    """
    import yaml

    from kidneyssl.io.atomic import atomic_write_json
    from kidneyssl.reporting.figures import plot_seed_curves
    from kidneyssl.reporting.statistics import compare_methods, comparison_pairs

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = list(rows)
    models = list(histories) or list(dict.fromkeys(r["model"] for r in rows))
    seeds = sorted({int(r["seed"]) for r in rows} | {int(s) for h in histories.values() for s in h})
    parts = [p for p in ("test", "val") if any(r.get("part") == p for r in rows)]
    tables: dict[str, list[dict[str, Any]]] = {}
    csv_rows: list[dict[str, Any]] = []
    for part in parts:
        per_model = {m: [r for r in rows if r["model"] == m and r["part"] == part] for m in models}
        tables[part] = table1_rows(per_model)
        csv_rows += [{**r, "model": f"{r['model']} ({part})"} for r in tables[part]]
    write_table1_csv(csv_rows, out / "table1.csv")
    _write_text(out / "table1.md", "".join(f"## {part}\n\n{table1_markdown(t)}\n" for part, t in tables.items()))

    protocol = _protocol(config)
    defaults = ProtocolConfig()
    min_seeds = int(protocol.get("min_seeds_for_verdict", defaults.min_seeds_for_verdict))
    min_cases = int(protocol.get("min_cases_for_verdict", defaults.min_cases_for_verdict))
    pairs = list(comparisons) if comparisons is not None else comparison_pairs(models, baselines)
    diffs = compare_methods(rows, pairs, metrics, parts, min_seeds=min_seeds, min_cases=min_cases)
    family = {part: next((d["n_comparisons"] for d in diffs if d["part"] == part), 0) for part in parts}
    rule = verdict_rule(min_seeds, min_cases)
    conv_header, conv_body, conv_data = _convergence(histories)
    differences = {"paired": diffs, "n_comparisons": family, "rule": rule, "epochs_to_reach": conv_data}
    atomic_write_json(out / "differences.json", differences)

    images: dict[str, bytes] = {}
    plot_seed_curves(histories, out / FIG5_NAME)
    images[FIG5_NAME] = (out / FIG5_NAME).read_bytes()
    proxy_name, loss_name = "proxy_accuracy.png", "pretraining_val_loss.png"
    # the side proxy has a pair accuracy; image-only methods (MAE, Genesis) a restoration loss only
    with_accuracy = {k: v for k, v in proxy_histories.items()
                     if any("val_accuracy" in row for rows in v.values() for row in rows)}
    loss_only = {k: v for k, v in proxy_histories.items() if k not in with_accuracy}
    if with_accuracy:
        plot_seed_curves(with_accuracy, out / proxy_name, key="val_accuracy",
                         ylabel="proxy validation pair accuracy",
                         title="Siamese proxy task: validation pair accuracy per epoch")
        images[proxy_name] = (out / proxy_name).read_bytes()
    if loss_only:
        plot_seed_curves(loss_only, out / loss_name, key="val_loss", ylabel="validation restoration loss (MSE)",
                         title="Image-only pretraining: validation loss per epoch")
        images[loss_name] = (out / loss_name).read_bytes()
    probe_name = "probe_dice.png"
    if any("probe_dice" in row for by_seed in proxy_histories.values() for h in by_seed.values() for row in h):
        plot_seed_curves(proxy_histories, out / probe_name, key="probe_dice", ylabel="frozen-encoder probe Dice",
                         title="Pretraining: kidney Dice of a linear probe on the frozen encoder per epoch")
        images[probe_name] = (out / probe_name).read_bytes()
    if overlays:
        plot_overlays(overlays, out / FIG4_NAME)
        images[FIG4_NAME] = (out / FIG4_NAME).read_bytes()

    from kidneyssl import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    split = dict(split or {})
    strategies = sorted({str(r.get("strategy")) for r in rows if r.get("strategy")})
    headline = []
    for d in diffs:
        if d["metric"] == "dice":
            headline.append(
                f"**{d['model']} − {d['reference']}, {d['part']} Dice: {_fmt_ci(d, 3)}** (mean paired difference, "
                f"{INTERVAL_WORDS[d['interval']]}, {d['n_cases']} cases x {d['n_seeds']} seed(s); {_test_words(d)}; "
                f"{d['wins']} pairs favour {d['model']}, {d['losses']} favour {d['reference']}): {d['conclusion']}.")
    blocks: list[Block] = [
        ("h1", title),
        ("p", f"Generated {now} by kidneyssl {__version__}. Reproduces the comparison of Dhere & Sivaswamy, "
              "\"Self-supervised learning for segmentation\": the same segmentation network trained from "
              "scratch (**MwoS**) and with its encoder initialised from a siamese network pretrained on the "
              "same-side/opposite-side kidney proxy task (**MwS**), with identical settings, seeds and split. "
              "The proxy input is a choice the paper leaves open, so each variant gets its own MwS: "
              "**MwS-region** (the whole fixed-size region around each kidney, as the paper's text says) and "
              "**MwS-masked** (only the kidney, everything else zeroed, as the authors' code does). Generic "
              "self-supervised methods, where run, are fine-tuned the same way: **MAE** (masked image modelling) "
              "and **Genesis** (Models Genesis restoration)."),
        ("h2", "Result"),
        *[("p", f"**{note}**") for note in notes],
        ("ul", headline or ["(no two models to compare)"]),
        ("p", rule + " " + _family_words(family)),
        ("p", f"Seeds: {', '.join(str(s) for s in seeds)}. Cases: {split.get('train', '?')} training, "
              f"{split.get('val', '?')} validation, {split.get('test', '?')} test ({split.get('test_source', '')}). "
              "Training and pretraining read only the training cases (pretraining validates on a held-out part of "
              "them); every model is scored with its last checkpoint, so no choice was made on validation or "
              "test data. Scoring used the same inference as `kidneyssl predict` "
              f"(strategy: {', '.join(strategies) or 'n/a'}), with no label anywhere before the metric."),
    ]
    if unlabeled:
        blocks.append(("p", _unlabeled_text(unlabeled)))
    blocks += [
        ("h2", "What was run"),
        ("ul", _run_contents(rows, models, seeds, proxy_histories, config) + _config_summary(config)),
        *([("p", "Pretraining budgets (means over seeds): unequal budgets are a difference between methods, "
                 "not only their ideas."), ("table", _budget_table(budgets))] if budgets else []),
        ("h2", "Per seed"),
        ("table", _seed_table(rows, models, seeds)),
    ]
    for part in parts:
        label = "test (held out, scored once)" if part == "test" else "validation (monitored every epoch)"
        blocks += [
            ("h2", f"Table 1: {label}"),
            ("p", "Mean ± sample standard deviation over all (case, seed) pairs with a defined value (n). A case "
                  "whose metric is undefined (e.g. a distance for an empty prediction) is counted as missed, "
                  "never silently dropped; Dice counts every case (0 for a missed kidney). The paper's validation "
                  "values are beside ours (DC and BL only; see the note on HD below)."),
            ("table", _table1_cells(tables[part])),
        ]
    blocks += [
        ("h2", "Paired differences"),
        ("p", "Per (seed, case) pair, a model minus its reference of the same seed on the same case. With at least "
              f"{BOOTSTRAP_MIN_CASES} cases: the mean over the pairs with a 95 % percentile bootstrap interval "
              "resampling seeds and cases independently (10 000 resamples) and the bootstrap p-value dual to it. "
              f"With fewer cases a percentile bootstrap is not a valid interval: each case's differences are "
              "averaged over the seeds first (the unit is the case), and the table shows a 95 % t-interval over "
              "those case means and a two-sided sign-flip (permutation) p-value, exact over all sign patterns. "
              "Dice: higher is better; HD95: lower is better. " + _family_words(family)),
        ("table", (["Comparison", "part", "metric", "mean [95 % interval]", "interval", "p", "Holm-adjusted p",
                    "pairs (cases x seeds)", "pairs better for model / reference", "per seed", "conclusion"],
                   [[f"{d['model']} − {d['reference']}", d["part"], d["metric"], _fmt_ci(d, _digits(d["metric"])),
                     d["interval"], _test_words(d), format_p(d, adjusted=True),
                     f"{d['n_pairs']} ({d['n_cases']} x {d['n_seeds']})", _favour(d),
                     ", ".join(f"{s}: {_fmt_diff(v, _digits(d['metric']))}" for s, v in d["per_seed"].items()),
                     d["conclusion"]] for d in diffs])),
        ("h2", "Convergence (the paper's faster-convergence claim)"),
        ("p", "First epoch at which each model's validation Dice reaches 90 % / 95 % of MwoS's final validation "
              "Dice of the same seed; mean over the seeds that reached it, per seed in brackets."),
        ("table", (conv_header, conv_body)),
        ("p", NHD_NOTE),
        ("p", "BL (%) = |B(prediction) - B(ground truth)| / B(ground truth) x 100 with B the size of the boundary "
              "(surface area in mm², see `kidneyssl.metrics`). Lower is better for HD, HD95, BL and "
              "normalised HD; higher for DC."),
        ("h2", "Empty and missed cases"),
        ("table", _case_counts({f"{m} ({p})": [r for r in rows if r["model"] == m and r["part"] == p]
                                for p in parts for m in models})),
        ("h2", "Figures"),
        ("img", (FIG5_NAME, "Fig. 5: validation Dice per epoch, mean over seeds (thick), each seed (thin) and "
                            "the min-max band")),
    ]
    if proxy_name in images:
        blocks.append(("img", (proxy_name, "Proxy task: validation pair accuracy per epoch for each proxy input "
                                           "(held-out training cases)")))
    if loss_name in images:
        blocks.append(("img", (loss_name, "Image-only pretraining: validation restoration loss per epoch on fixed "
                                          "crops of the held-out training cases (z-scored intensities)")))
    if probe_name in images:
        blocks.append(("img", (probe_name, "Frozen-encoder probe (pretrain.probe_steps): kidney Dice of a 1x1x1 conv "
                                           "head trained on the frozen encoder's features of the pretraining's "
                                           "held-out training cases, per epoch; it informs and chooses nothing "
                                           "unless pretrain.select_by is probe_dice")))
    if overlays:
        blocks.append(("img", (FIG4_NAME, "Fig. 4: ground truth (green) and prediction (red), overlap yellow, on "
                                          "the axial slice with the largest ground-truth area (first seed, test "
                                          "cases); radiological display (patient right on the image left)")))
    else:
        blocks.append(("p", "Fig. 4 left out: no overlay cases were given."))
    if compute:
        blocks += [("h2", "Compute"),
                   ("p", "Wall time of every stage and its device-seconds (wall time x devices held), from "
                         "`experiment.json`; a resumed stage adds up its parts."),
                   ("table", compute_table(compute))]
    elif timings:
        blocks += [("h2", "Timings"), ("table", (["Stage", "time"], [[str(k), format_seconds(v)]
                                                                     for k, v in timings.items()]))]
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)
    blocks += [("h2", "Configuration"), ("details", ("Full resolved configuration", config_yaml))]
    if not rows:
        log.warning("experiment report without any per-case metrics")

    _write_text(out / "report.html", render_html(blocks, images, title))
    report = out / "report.md"
    _write_text(report, render_markdown(blocks))
    return report, differences


def compute_table(compute: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Stage, wall time, devices, device-seconds (and hours), device: one row per stage, then the total."""
    header = ["Stage", "wall time", "devices", "device-seconds", "device"]
    body, total = [], 0.0
    for stage, c in compute.items():
        device_s = float(c.get("device_seconds", math.nan))
        total += device_s if math.isfinite(device_s) else 0.0
        body.append([str(stage), format_seconds(c.get("wall_seconds")), str(c.get("devices", "?")),
                     f"{device_s:.1f} ({device_s / 3600:.3f} h)", str(c.get("device", "?"))])
    body.append(["total", "", "", f"{total:.1f} ({total / 3600:.3f} h)", ""])
    return header, body


def _plain(value: Any) -> Any:
    """Config values as plain YAML-safe types (tuples -> lists, numpy scalars -> Python)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value
