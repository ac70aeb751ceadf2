"""Per-case metric tables (CSV) and Markdown summaries (mean ± SD with counts of missed cases).

Rows are the dicts of :func:`kidneyssl.metrics.compute_case_metrics`, usually with ``case_id`` and
other columns in front; summaries are :func:`kidneyssl.metrics.summarize` results.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable, Mapping

from kidneyssl.io.atomic import atomic_write_text

__all__ = ["METRIC_LABELS", "DIGITS", "format_value", "metric_cell", "write_case_table", "read_case_table",
           "summary_markdown"]

#: Column labels of the summary table, in table order (unknown metrics follow, by key).
METRIC_LABELS: dict[str, str] = {
    "dice": "Dice (DC)",
    "dice_tumor": "Dice (tumour)",
    "hd_mm": "HD (mm)",
    "hd95_mm": "HD95 (mm)",
    "bl_pct": "BL (%)",
    "nhd": "normalised HD (not the paper's HD)",
}
#: Decimals shown per metric in reports (others: 3).
DIGITS: dict[str, int] = {"dice": 3, "dice_tumor": 3, "hd_mm": 1, "hd95_mm": 1, "bl_pct": 1, "nhd": 3}


def _cell(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return repr(value)  # full precision; NaN is written as 'nan'
    return str(value)


def write_case_table(rows: Iterable[Mapping[str, Any]], path_csv: str | Path) -> Path:
    """Write per-case rows to a CSV file atomically and return its path.

    Columns are the union of the rows' keys in first-seen order (``case_id`` first when present);
    a row lacking a column gets an empty cell. Floats keep full precision, NaN is ``nan``, flags are
    ``True``/``False``.
    """
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    if "case_id" in columns:
        columns.insert(0, columns.pop(columns.index("case_id")))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in columns])
    path = Path(path_csv)
    atomic_write_text(path, buf.getvalue())
    return path


def _parse(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "":
        return None
    try:
        return float(text)
    except ValueError:
        return text


def read_case_table(path_csv: str | Path) -> list[dict[str, Any]]:
    """Read a table written by :func:`write_case_table` (numbers as float, flags as bool)."""
    with open(path_csv, newline="") as fh:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def format_value(x: float, digits: int) -> str:
    """A metric value for a table: ``digits`` decimals, ``–`` when undefined (NaN/inf), and
    scientific notation for tiny non-zero values (e.g. normalised HD ~1e-4) so they keep their size."""
    if not math.isfinite(x):
        return "–"
    if x != 0 and abs(x) < 10 ** -digits:
        return f"{x:.2e}"
    return f"{x:.{digits}f}"


def metric_cell(stats: Mapping[str, Any], n_cases: int, digits: int) -> str:
    """``mean ± sd``, with ``(n=k/N, m undefined)`` when the mean leaves cases out: the one cell
    format of every metric table (``evaluate``'s summary and the experiment's Table 1)."""
    text = f"{format_value(stats['mean'], digits)} ± {format_value(stats['sd'], digits)}"
    notes = []
    if stats.get("n_nan"):
        notes.append(f"n={stats['n']}/{n_cases}, {stats['n_nan']} undefined")
    if stats.get("n_substituted"):
        notes.append(f"{stats['n_substituted']} worst-case")
    return text + (f" ({'; '.join(notes)})" if notes else "")


def _metric_keys(summaries: Mapping[str, Mapping[str, Any]]) -> list[str]:
    keys: list[str] = []
    for summary in summaries.values():
        keys.extend(k for k, v in summary.items() if isinstance(v, Mapping) and "mean" in v and k not in keys)
    order = list(METRIC_LABELS)
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))


def summary_markdown(summary: Mapping[str, Any], title: str | None = None, digits: int = 3) -> str:
    """A Markdown table of mean ± SD per metric, with counts of cases, missed and empty masks.

    Args:
        summary: one :func:`~kidneyssl.metrics.summarize` result, or ``{model_name: summary}`` for
            a side-by-side table (e.g. ``{"MwoS": ..., "MwS": ...}``, the paper's Table 1).
        title: optional heading line.
        digits: decimals shown.

    Undefined values (NaN HD of a missed case, ...) are never hidden: a cell that averages fewer
    than all cases says ``n=k/N, m undefined``, and a note under the table explains the policy.
    """
    summaries: dict[str, Mapping[str, Any]] = (
        {"value": summary} if "n_cases" in summary else {str(k): v for k, v in summary.items()}
    )
    names = list(summaries)
    lines = [f"## {title}", ""] if title else []
    lines.append("| Metric | " + " | ".join(f"{n} (mean ± SD)" if n != "value" else "mean ± SD" for n in names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for key in _metric_keys(summaries):
        cells = [
            metric_cell(s[key], int(s.get("n_cases", 0)), digits) if key in s else "—" for s in summaries.values()
        ]
        lines.append(f"| {METRIC_LABELS.get(key, key)} | " + " | ".join(cells) + " |")
    for label, key in (("cases", "n_cases"), ("missed (empty prediction)", "n_missed"),
                       ("empty prediction", "n_empty_pred"), ("empty ground truth", "n_empty_gt")):
        lines.append(f"| {label} | " + " | ".join(str(s.get(key, 0)) for s in summaries.values()) + " |")
    notes = []
    for name, s in summaries.items():
        who = "" if name == "value" else f"{name}: "
        if s.get("incomplete"):
            notes.append(f"- {who}some means leave out cases whose metric is undefined (an empty prediction or "
                         "ground truth); a model that misses more can look better on HD/HD95 this way.")
        if s.get("missing_hd") == "max" and any(
            isinstance(v, Mapping) and v.get("n_substituted") for v in s.values()
        ):
            notes.append(f"- {who}undefined HD/HD95 were replaced by the image diagonal (worst case).")
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"
