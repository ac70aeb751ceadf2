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

from kidneyssl.io.atomic import atomic_write_text
from kidneyssl.reporting.figures import OverlayCase, plot_dice_curves, plot_overlays

__all__ = [
    "TABLE1_METRICS",
    "TABLE1_COLUMNS",
    "PAPER_TABLE1",
    "table1_rows",
    "write_table1_csv",
    "table1_markdown",
    "write_experiment_report",
]

log = logging.getLogger(__name__)

# (row key in the per-case metric rows, column label as in the paper's Table 1)
TABLE1_METRICS: tuple[tuple[str, str], ...] = (
    ("dice", "DC"),
    ("hd_mm", "HD (mm)"),
    ("hd95_mm", "HD95 (mm)"),
    ("bl_pct", "BL (%)"),
    ("nhd", "normalised HD"),
)
TABLE1_COLUMNS: tuple[str, ...] = (
    "model", "metric", "label", "mean", "sd", "n", "n_missed", "n_cases", "paper_value",
)
# Validation values of the paper's Table 1. Its "HD" column (0.303 / 0.291) is not in mm: it is the
# authors' normalised HD, so it is compared with our "nhd" row, not with "hd_mm".
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "MwoS": {"dice": 0.907, "nhd": 0.303, "bl_pct": 14.0},
    "MwS": {"dice": 0.931, "nhd": 0.291, "bl_pct": 12.9},
}
FIG4_NAME = "fig4_overlays.png"
FIG5_NAME = "fig5_dice_curves.png"


# ----------------------------------------------------------------------------------------- Table 1
def _value(row: Mapping[str, Any], key: str) -> float:
    value = row.get(key)
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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
    from kidneyssl.metrics import summarize  # mean/sd over finite values, NaN counted in n_nan

    rows = []
    for model, cases in per_case.items():
        summary = summarize(list(cases))
        for key, label in TABLE1_METRICS:
            stats = summary[key]
            rows.append({
                "model": model, "metric": key, "label": label, "mean": stats["mean"], "sd": stats["sd"],
                "n": stats["n"], "n_missed": stats["n_nan"], "n_cases": summary["n_cases"],
                "paper_value": PAPER_TABLE1.get(model, {}).get(key, math.nan),
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


def _fmt(value: float, digits: int) -> str:
    if not math.isfinite(value):
        return "–"
    if value != 0 and abs(value) < 10 ** -digits:  # e.g. normalised HD ~1e-4: keep its magnitude
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


_DIGITS = {"dice": 3, "hd_mm": 1, "hd95_mm": 1, "bl_pct": 1, "nhd": 3}


def _table1_cells(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    models = list(dict.fromkeys(r["model"] for r in rows))
    paper_models = [m for m in models if m in PAPER_TABLE1]
    header = ["Metric"] + models + [f"paper {m}" for m in paper_models]
    body = []
    for key, label in TABLE1_METRICS:
        line = [label]
        for model in models:
            r = next(r for r in rows if r["model"] == model and r["metric"] == key)
            d = _DIGITS[key]
            cell = f"{_fmt(r['mean'], d)} ± {_fmt(r['sd'], d)}"
            cell += f" (n={r['n']}, {r['n_missed']} missed)" if r["n_missed"] else f" (n={r['n']})"
            line.append(cell)
        for model in paper_models:
            line.append(_fmt(PAPER_TABLE1[model].get(key, math.nan), _DIGITS[key]))
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


def _render_md(blocks: Sequence[Block]) -> str:
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


def _render_html(blocks: Sequence[Block], images: Mapping[str, bytes], title: str) -> str:
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
        ("preprocess.window_hu", "HU window"), ("preprocess.crop_size", "kidney crop (voxels)"),
        ("model.init_features", "initial features"), ("model.growth_rate", "growth rate"),
        ("model.block_layers", "dense block layers"), ("model.reconstruction", "reconstruction branch"),
        ("pretrain.epochs", "siamese pretraining epochs"), ("pretrain.pairs_per_epoch", "pairs per epoch"),
        ("pretrain.margin", "contrastive margin"), ("train.epochs", "segmentation epochs"),
        ("train.lr", "learning rate (Adam)"), ("train.weight_decay", "weight decay"),
        ("train.batch_size", "batch size"), ("train.val_fraction", "validation fraction"),
        ("train.seed", "seed"),
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


def _format_seconds(value: Any) -> str:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(seconds):
        return "–"
    return f"{seconds:.1f} s ({_dt.timedelta(seconds=round(seconds))})"


def _training_rows(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[list[str]]:
    body = []
    for model, rows in histories.items():
        dice = [(_value(r, "val_dice"), int(_value(r, "epoch")) if math.isfinite(_value(r, "epoch")) else i)
                for i, r in enumerate(rows)]
        finite = [(d, e) for d, e in dice if math.isfinite(d)]
        best = max(finite, key=lambda t: t[0]) if finite else None
        seconds = sum(s for s in (_value(r, "seconds") for r in rows) if math.isfinite(s))
        body.append([
            model, str(len(rows)),
            f"{best[0]:.3f} (epoch {best[1]})" if best else "–",
            _fmt(finite[-1][0], 3) if finite else "–",
            _format_seconds(seconds) if seconds else "–",
        ])
    return body


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
    "**Normalised HD** is the paper-comparable column: the authors' code reports, as \"HD\", the "
    "directed Hausdorff distance in voxels divided by the number of predicted foreground voxels. It is "
    "not a distance in mm and depends on the grid and the object size, so it is only meaningful beside "
    "the paper's HD values (0.303 MwoS / 0.291 MwS); HD and HD95 in mm are the physical, symmetric "
    "surface distances."
)


def write_experiment_report(
    out_dir: str | Path,
    per_case: Mapping[str, Sequence[Mapping[str, Any]]],
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    overlays: Sequence[OverlayCase],
    config: Mapping[str, Any],
    timings: Mapping[str, Any] | None = None,
    title: str = "kidneyssl experiment report",
) -> Path:
    """Write the experiment's report folder and return the path of ``report.md``.

    Args:
        out_dir: report folder (created).
        per_case: model name ("MwoS", "MwS", ...) -> validation per-case metric rows as returned by
            ``kidneyssl.metrics.compute_case_metrics`` (plus an optional ``case_id``).
        histories: model name -> training history rows (``epoch``, ``val_dice``, ``seconds``, ...).
        overlays: up to 3 cases for Fig. 4 (may be empty: the figure is then left out).
        config: ``config_to_dict(ExperimentConfig)`` of the run.
        timings: stage name -> seconds (or any printable value), shown as a table.
        title: document title.

    Returns:
        ``out_dir / "report.md"``; ``report.html``, ``table1.csv``, ``table1.md`` and the figures
        are beside it. Every file is written atomically.
    """
    import yaml

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table1_rows(per_case)
    write_table1_csv(rows, out / "table1.csv")
    table_md = table1_markdown(rows)
    _write_text(out / "table1.md", table_md)

    images: dict[str, bytes] = {}
    plot_dice_curves(histories, out / FIG5_NAME)
    images[FIG5_NAME] = (out / FIG5_NAME).read_bytes()
    if overlays:
        plot_overlays(overlays, out / FIG4_NAME)
        images[FIG4_NAME] = (out / FIG4_NAME).read_bytes()

    from kidneyssl import __version__

    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    models = list(per_case)
    blocks: list[Block] = [
        ("h1", title),
        ("p", f"Generated {now} by kidneyssl {__version__}. Reproduces the comparison of Dhere & Sivaswamy, "
              "\"Self-supervised learning for segmentation\": the same segmentation network trained from "
              "scratch (**MwoS**) and with its encoder initialised from a siamese network pretrained on the "
              "same-side/opposite-side kidney proxy task (**MwS**), with identical settings, seeds and "
              "training/validation split."),
        ("h2", "What was run"),
        ("ul", _config_summary(config) or ["(no configuration given)"]),
        ("table", (["Model", "epochs", "peak validation Dice", "final validation Dice", "training time"],
                   _training_rows(histories))),
        ("h2", "Table 1: validation metrics"),
        ("p", "Mean ± sample standard deviation over the validation cases with a defined value (n). A case whose "
              "metric is undefined (e.g. a distance for an empty prediction) is counted as missed, shown in the "
              "table, never silently dropped; Dice counts every case (0 for a missed kidney). The paper's "
              "validation values are beside ours (its HD column is the normalised HD; its DC values equal the "
              "*peak* validation Dice it reports over 200 epochs, so compare them with the peak column above "
              "too). Per-metric counts are in `table1.csv`."),
        ("table", _table1_cells(rows)),
        ("p", NHD_NOTE),
        ("p", "BL (%) = |B(prediction) - B(ground truth)| / B(ground truth) x 100 with B the size of the boundary "
              "(surface area in mm², see `kidneyssl.metrics`). Lower is better for HD, HD95, BL and "
              "normalised HD; higher for DC."),
        ("h2", "Empty and missed cases"),
        ("table", _case_counts(per_case)),
        ("h2", "Figures"),
        ("img", (FIG5_NAME, "Fig. 5: validation Dice per epoch, raw (thin) and moving average (thick)")),
    ]
    if overlays:
        blocks.append(("img", (FIG4_NAME, "Fig. 4: ground truth (green) and prediction (red), overlap yellow, on "
                                          "the axial slice with the largest ground-truth area; radiological "
                                          "display (patient right on the image left, marked R/L)")))
    else:
        blocks.append(("p", "Fig. 4 left out: no overlay cases were given."))
    if timings:
        blocks += [("h2", "Timings"), ("table", (["Stage", "time"], [[str(k), _format_seconds(v)]
                                                                     for k, v in timings.items()]))]
    config_yaml = yaml.safe_dump(_plain(config), sort_keys=False, default_flow_style=None)
    blocks += [("h2", "Configuration"), ("details", ("Full resolved configuration", config_yaml))]
    if not models:
        log.warning("experiment report without any per-case metrics")

    _write_text(out / "report.html", _render_html(blocks, images, title))
    report = out / "report.md"
    _write_text(report, _render_md(blocks))
    return report


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
