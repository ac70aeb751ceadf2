"""Per-case metric rows, summaries that never hide a missed case, and a MONAI-style accumulator.

A row (:func:`compute_case_metrics`) has the keys of :data:`ROW_KEYS`: ``dice, hd_mm, hd95_mm,
bl_pct, nhd`` (floats, NaN where undefined: see the empty-mask table in
:mod:`kidneyssl.metrics.surface`), ``pred_voxels, gt_voxels`` (counts, as floats), ``empty_pred,
empty_gt`` (bools) and ``diag_mm`` (the image diagonal in mm, the worst possible distance, used by
``summarize(..., missing_hd="max")``).

The trap :func:`summarize` guards against: a model that misses a kidney completely gets HD = NaN
for that case. Averaging HD95 over the non-NaN cases then *drops its worst cases*, so a model that
misses more can show a lower (better) mean HD95. So every metric reports ``n`` (finite values
averaged) and ``n_nan`` next to its mean, the summary counts empty/missed cases, ``incomplete`` is
True whenever a mean leaves a case out, and ``missing_hd="max"`` substitutes the worst case
(the image diagonal) for undefined HD/HD95 instead.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from kidneyssl.metrics.overlap import as_binary_pair, dice
from kidneyssl.metrics.surface import (
    BoundaryMode,
    boundary_length_difference,
    hd_from_distances,
    normalized_hausdorff_of_surfaces,
    spacing3,
    surface_distances_between,
    surface_voxels,
)
from kidneyssl.preprocessing.spatial import bounding_box

__all__ = [
    "METRIC_NAMES",
    "ROW_KEYS",
    "compute_case_metrics",
    "summarize",
    "MetricAccumulator",
]

#: Metrics that :func:`summarize` reports, in table order.
METRIC_NAMES: tuple[str, ...] = ("dice", "hd_mm", "hd95_mm", "bl_pct", "nhd")
#: Keys of a row from :func:`compute_case_metrics`.
ROW_KEYS: tuple[str, ...] = METRIC_NAMES + ("pred_voxels", "gt_voxels", "empty_pred", "empty_gt", "diag_mm")
_HD_METRICS = ("hd_mm", "hd95_mm")

MissingHD = Literal["nan", "max"]


def compute_case_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    spacing_mm: Sequence[float] | float,
    bl_mode: BoundaryMode = "surface",
) -> dict[str, Any]:
    """All metrics of one case, computed on the crop around both masks (fast on 300 x 512 x 512).

    Args:
        pred, gt: (Z, Y, X) binary masks of equal shape (non-zero = foreground).
        spacing_mm: voxel size (z, y, x) in mm.
        bl_mode: boundary measure of BL%: ``"surface"`` (mm², default) or ``"perimeter"``.

    Returns:
        A row with the keys of :data:`ROW_KEYS` (see the module docstring).
    """
    spacing = spacing3(spacing_mm)
    p, g = as_binary_pair(pred, gt)
    diag = math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(p.shape, spacing)))
    box = bounding_box(p, g, margin=1)
    if box is not None:  # every metric below is unchanged by this crop (see surface.py)
        p, g = p[box], g[box]
    n_p, n_g = int(np.count_nonzero(p)), int(np.count_nonzero(g))
    p_surface, g_surface = surface_voxels(p), surface_voxels(g)
    if n_p and n_g:
        d_pg, d_gp = surface_distances_between(p_surface, g_surface, spacing)
        hd = hd_from_distances(d_pg, d_gp, None)
        hd95 = hd_from_distances(d_pg, d_gp, 95)
    else:
        hd = hd95 = 0.0 if n_p == n_g == 0 else float("nan")
    return {
        "dice": dice(p, g),
        "hd_mm": hd,
        "hd95_mm": hd95,
        "bl_pct": boundary_length_difference(p, g, spacing, mode=bl_mode),
        "nhd": normalized_hausdorff_of_surfaces(p, g, g_surface),
        "pred_voxels": float(n_p),
        "gt_voxels": float(n_g),
        "empty_pred": n_p == 0,
        "empty_gt": n_g == 0,
        "diag_mm": diag,
    }


def _as_bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _as_float(value: Any) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return float("nan")
    return float(value)


def summarize(rows: Iterable[Mapping[str, Any]], missing_hd: MissingHD = "nan") -> dict[str, Any]:
    """Mean ± SD of each metric over cases, with counts of what could not be averaged.

    Args:
        rows: per-case rows from :func:`compute_case_metrics` (extra keys such as ``case_id`` are
            ignored; values may be strings as read back from a CSV).
        missing_hd: ``"nan"``: undefined HD/HD95 (a missed or hallucinated kidney) stay NaN, are
            counted in ``n_nan`` and left out of the mean, and ``incomplete`` is set.
            ``"max"``: they are replaced by that case's ``diag_mm`` (the largest distance the image
            allows), counted in ``n_substituted``.

    Returns:
        ``{metric: {"mean", "sd", "n", "n_nan", "n_substituted"}}`` for each of
        :data:`METRIC_NAMES` (``sd`` is the sample SD, ddof=1; NaN when n < 2; ``mean`` NaN when
        n = 0), plus ``n_cases``, ``n_empty_pred``, ``n_empty_gt``, ``n_missed`` (empty prediction,
        non-empty ground truth), ``missing_hd`` and ``incomplete`` (True if any mean left out a
        case).
    """
    if missing_hd not in ("nan", "max"):
        raise ValueError(f"missing_hd must be 'nan' or 'max', got {missing_hd!r}")
    rows = list(rows)
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = np.array([_as_float(r.get(name)) for r in rows], dtype=np.float64)
        n_sub = 0
        if missing_hd == "max" and name in _HD_METRICS:
            for i, r in enumerate(rows):
                if math.isnan(values[i]):
                    if "diag_mm" not in r or math.isnan(_as_float(r["diag_mm"])):
                        raise ValueError(f"missing_hd='max' needs 'diag_mm' in every row (row {i} has none)")
                    values[i] = _as_float(r["diag_mm"])
                    n_sub += 1
        finite = values[np.isfinite(values)]
        out[name] = {
            "mean": float(finite.mean()) if finite.size else float("nan"),
            "sd": float(finite.std(ddof=1)) if finite.size >= 2 else float("nan"),
            "n": int(finite.size),
            "n_nan": int(values.size - finite.size),
            "n_substituted": n_sub,
        }
    empty_pred = [_as_bool(r.get("empty_pred", False)) for r in rows]
    empty_gt = [_as_bool(r.get("empty_gt", False)) for r in rows]
    out["n_cases"] = len(rows)
    out["n_empty_pred"] = sum(empty_pred)
    out["n_empty_gt"] = sum(empty_gt)
    out["n_missed"] = sum(p and not g for p, g in zip(empty_pred, empty_gt))
    out["missing_hd"] = missing_hd
    out["incomplete"] = any(out[name]["n_nan"] for name in METRIC_NAMES)
    return out


class MetricAccumulator:
    """Collects per-case rows and summarises them (MONAI's cumulative-metric pattern).

    Example:
        >>> acc = MetricAccumulator()
        >>> row = acc.add("case_00000", pred, gt, spacing_mm=(3.0, 0.8, 0.8))  # doctest: +SKIP
        >>> acc.aggregate()["dice"]["mean"]  # doctest: +SKIP
    """

    def __init__(self, bl_mode: BoundaryMode = "surface") -> None:
        if bl_mode not in ("surface", "perimeter"):
            raise ValueError(f"bl_mode must be 'surface' or 'perimeter', got {bl_mode!r}")
        self.bl_mode: BoundaryMode = bl_mode
        self._rows: list[dict[str, Any]] = []

    def add(self, case_id: str, pred: np.ndarray, gt: np.ndarray, spacing_mm: Sequence[float] | float,
            **extra: Any) -> dict[str, Any]:
        """Compute one case's row (``case_id`` first, then ``extra`` columns), store and return it."""
        row: dict[str, Any] = {"case_id": str(case_id), **extra}
        row.update(compute_case_metrics(pred, gt, spacing_mm, bl_mode=self.bl_mode))
        self._rows.append(row)
        return row

    @property
    def rows(self) -> list[dict[str, Any]]:
        """A copy of the rows added so far, in order."""
        return [dict(r) for r in self._rows]

    def aggregate(self, missing_hd: MissingHD = "nan") -> dict[str, Any]:
        """:func:`summarize` over the rows added so far."""
        return summarize(self._rows, missing_hd=missing_hd)

    def reset(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)
