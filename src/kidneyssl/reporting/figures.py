"""Figures of the experiment: training history, the paper's Fig. 5 (Dice curves) and Fig. 4 (overlays).

matplotlib is imported lazily and used through its object-oriented API (``Figure`` rendered by the Agg
canvas), never through ``pyplot``: no display is needed, no global figure state is kept, and a caller
that has chosen another pyplot backend is not disturbed. Every PNG is written atomically.

Orientation of the overlays: arrays are in kidneyssl's canonical orientation (nibabel axis codes
``('I', 'P', 'L')``): in an axial slice ``array[z]`` of shape (Y, X), row index grows towards the
patient's POSTERIOR and column index towards the patient's LEFT. Shown as is (row 0 at the top), the
slice is in the radiological convention used by CT viewers: anterior at the top and the patient's
RIGHT on the viewer's LEFT (as if looking up from the feet of a supine patient; DICOM/RTOG describe
head-first-supine images this way). The sides are labelled "R"/"L" (and "A"/"P") on every panel.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import numpy as np

from kidneyssl.io.atomic import atomic_save

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "OverlayCase",
    "moving_average",
    "select_axial_slice",
    "plot_history",
    "refresh_history_plot",
    "plot_dice_curves",
    "plot_seed_curves",
    "plot_overlays",
    "model_colours",
    "new_figure",
    "save_figure",
]

log = logging.getLogger(__name__)

GT_COLOUR = (0.0, 0.75, 0.0)  # green: ground truth (as in the paper's Fig. 4)
PRED_COLOUR = (0.9, 0.0, 0.0)  # red: prediction
OVERLAP_COLOUR = (1.0, 0.85, 0.0)  # yellow: both
DPI = 110
MAX_OVERLAY_CASES = 3

# Fixed colours for the paper's two models so that every figure uses the same ones; other models
# take the next free colours of matplotlib's tab10 cycle.
_MODEL_COLOURS = {"MwoS": "tab:blue", "MwS": "tab:orange", "MwS-region": "tab:orange",
                  "MwS-masked": "tab:green", "region": "tab:orange", "masked": "tab:green",
                  "MwS+U": "tab:red", "region+U": "tab:red", "masked+U": "tab:red"}
_CYCLE = ["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray", "tab:olive"]


@dataclass
class OverlayCase:
    """One validation case for Fig. 4.

    Attributes:
        case_id: e.g. ``"case_00012"``.
        image: (Z, Y, X) CT image (HU or z-scored), canonical orientation ('I', 'P', 'L').
        gt: (Z, Y, X) ground-truth mask (non-zero = kidney), same shape.
        predictions: model name -> (Z, Y, X) binary prediction, same shape; insertion order = columns.
        dice: model name -> that case's Dice for the titles; computed from the masks when absent.
        spacing_mm: (z, y, x) voxel spacing, used only for the displayed aspect ratio (y/x).
    """

    case_id: str
    image: np.ndarray
    gt: np.ndarray
    predictions: dict[str, np.ndarray]
    dice: dict[str, float] | None = None
    spacing_mm: tuple[float, float, float] | None = None


def new_figure(width_in: float, height_in: float,
                layout: Literal["constrained", "compressed", "tight"] | None = None) -> "Figure":
    """A matplotlib ``Figure`` on an Agg canvas: no pyplot, no display, no global state (lazy import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: "Figure", path: str | Path) -> Path:
    """Write ``fig`` as PNG, atomically."""
    path = Path(path)

    atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI), suffix=".png")
    return path


def _epoch_axis(ax: Any, epochs: Sequence[np.ndarray]) -> None:
    """Integer epoch ticks; a sensible x range when there is a single epoch."""
    ax.set_xlabel("epoch")
    ax.xaxis.get_major_locator().set_params(integer=True)
    xs = np.concatenate([np.asarray(e, dtype=np.float64) for e in epochs]) if epochs else np.zeros(0)
    if xs.size and xs.max() - xs.min() < 1:
        ax.set_xlim(xs.min() - 1, xs.max() + 1)


def model_colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per model, the paper's models always in the same one."""
    colours: dict[str, str] = {}
    free = [c for c in _CYCLE]
    for name in names:
        if name in _MODEL_COLOURS:
            colours[name] = _MODEL_COLOURS[name]
        else:
            colours[name] = free.pop(0) if free else "black"
    return colours


def _as_float(value: Any) -> float | None:
    """A number from a history/metric value; ``None`` for non-numbers (strings, bools, lists)."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    return float(value)


def moving_average(values: Sequence[float] | np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average, same length as ``values``, ignoring NaN.

    Element ``i`` is the mean of the finite values among ``values[max(0, i - w + 1) : i + 1]`` with
    ``w = min(window, len(values))`` (the first ``w - 1`` points average over fewer values); NaN where
    that span holds no finite value. Trailing rather than centred so that the curve at epoch ``i`` uses
    no later epoch (as TensorBoard-style smoothing of a running training curve does).

    Args:
        values: per-epoch values (NaN allowed).
        window: window length in epochs, >= 1 (clipped to the number of values).

    Returns:
        (N,) float64 array.

    Raises:
        ValueError: ``window < 1``.
    """
    if int(window) < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    if n == 0:
        return x.copy()
    w = min(int(window), n)
    finite = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, n + 1)
    lo = np.maximum(hi - w, 0)
    count = ccount[hi] - ccount[lo]
    total = csum[hi] - csum[lo]
    out = np.full(n, np.nan)
    np.divide(total, count, out=out, where=count > 0)
    return out


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) of ``key`` over the rows that have it; epoch = row['epoch'] or row index."""
    xs, ys = [], []
    for i, row in enumerate(rows):
        if key not in row:
            continue
        y = _as_float(row[key])
        if y is None:
            continue
        epoch = _as_float(row.get("epoch", i))
        xs.append(i if epoch is None or not math.isfinite(epoch) else epoch)
        ys.append(y)
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


#: History fields that are flags, not curves.
_NOT_PLOTTED = {"probe_held_out"}


def _history_panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Group the numeric keys present in the rows into panels (title, keys)."""
    keys: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key != "epoch" and key not in keys and _as_float(value) is not None:
                keys.append(key)
    keys = [k for k in keys if np.isfinite(_series(rows, k)[1]).any() and k not in _NOT_PLOTTED]
    probe = [k for k in keys if k.startswith("probe_")]  # the frozen-encoder probe, beside the proxy loss
    losses = [k for k in keys if "loss" in k and k not in probe]
    weights = [k for k in keys if k.startswith("w_")]
    validation = [k for k in keys if k.startswith("val_") and k not in losses]
    seconds = [k for k in keys if k == "seconds"]
    used = set(losses) | set(weights) | set(validation) | set(seconds) | set(probe)
    other = [k for k in keys if k not in used]
    panels = [
        ("Loss", losses),
        ("Frozen-encoder probe (held-out training cases)", probe),
        ("Validation metrics", validation),
        ("Loss weights (BCE / Dice)", weights),
        ("Other", other),
        ("Seconds per epoch", seconds),
    ]
    return [(title, ks) for title, ks in panels if ks]


def plot_history(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str | None = None) -> Path:
    """Per-epoch training plot, meant to be refreshed by training after every epoch.

    Plots whatever numeric keys the rows hold, grouped in panels: losses (``train_loss``,
    ``val_loss``, ...), validation metrics (``val_dice`` / ``val_accuracy``), the BCE/Dice loss
    weights (``w_bce``, ``w_dice``), seconds per epoch, anything else. Works with one row, with keys
    missing from some rows and with NaN/``None`` values (gaps in the lines).

    Args:
        rows: history rows (one dict per epoch, ``epoch`` 0-based; the row index when absent).
        path: output PNG.
        title: figure title (default "Training history").

    Returns:
        ``path`` as a Path.
    """
    rows = list(rows)
    panels = _history_panels(rows)
    ncols = max(1, min(len(panels), 3))
    nrows = max(1, math.ceil(len(panels) / 3))
    fig = new_figure(4.2 * ncols, 3.2 * nrows + 0.4)
    fig.suptitle(title or "Training history")
    if not panels:
        ax = fig.add_subplot(1, 1, 1)
        ax.axis("off")
        ax.text(0.5, 0.5, "no numeric values recorded yet", ha="center", va="center")
    for index, (panel_title, keys) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, index + 1)
        all_xs = []
        for key in keys:
            xs, ys = _series(rows, key)
            all_xs.append(xs)
            ax.plot(xs, ys, marker="o" if len(xs) <= 30 else None, markersize=3, linewidth=1.5, label=key)
        ax.set_title(panel_title, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        _epoch_axis(ax, all_xs)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_dice_curves(
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    window: int = 5,
    key: str = "val_dice",
) -> Path:
    """The paper's Fig. 5: validation Dice per epoch for each model, raw and moving-averaged.

    Raw curves are thin and transparent, the moving averages (:func:`moving_average`, trailing,
    window clipped to each model's number of epochs) thick, in the same colour per model (MwoS blue,
    MwS orange). Models without any ``key`` values are listed in the legend as "no data".

    Args:
        histories: model name -> history rows (``epoch``, ``key``).
        path: output PNG.
        window: moving-average window in epochs (>= 1).
        key: the history key plotted.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: ``window < 1``.
    """
    if int(window) < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    colours = model_colours(list(histories))
    fig = new_figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    any_data = False
    all_xs = []
    for name, rows in histories.items():
        xs, ys = _series(list(rows), key)
        all_xs.append(xs)
        if not np.isfinite(ys).any():
            ax.plot([], [], color=colours[name], label=f"{name}: no data")
            continue
        any_data = True
        w = min(int(window), len(ys))
        marker = "o" if len(xs) <= 3 else None
        ax.plot(xs, ys, color=colours[name], linewidth=1.0, alpha=0.35, marker=marker, label=f"{name} (raw)")
        ax.plot(xs, moving_average(ys, w), color=colours[name], linewidth=2.5, marker=marker,
                label=f"{name} (moving average, {w} epoch{'' if w == 1 else 's'})")
    if not any_data:
        ax.text(0.5, 0.5, f"no '{key}' values recorded", ha="center", va="center", transform=ax.transAxes)
    _epoch_axis(ax, all_xs)
    ax.set_ylabel("validation Dice" if key == "val_dice" else key)
    ax.set_title("Validation Dice per epoch (cf. paper Fig. 5)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_seed_curves(
    curves: Mapping[str, Mapping[int, Sequence[Mapping[str, Any]]]],
    path: str | Path,
    key: str = "val_dice",
    ylabel: str = "validation Dice",
    title: str = "Validation Dice per epoch over seeds (cf. paper Fig. 5)",
) -> Path:
    """Per-epoch curves of several seeds: the mean over seeds (thick) with a band from the lowest
    to the highest seed (shaded) and each seed thin, one colour per model.

    Args:
        curves: model (or variant) name -> seed -> history rows (``epoch``, ``key``).
        path: output PNG.
        key: the history key plotted (``val_dice``; ``val_accuracy`` for the proxy task).
    """
    colours = model_colours(list(curves))
    fig = new_figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    all_xs = []
    any_data = False
    for name, by_seed in curves.items():
        series = [_series(list(rows), key) for rows in by_seed.values()]
        series = [(xs, ys) for xs, ys in series if np.isfinite(ys).any()]
        if not series:
            ax.plot([], [], color=colours[name], label=f"{name}: no data")
            continue
        any_data = True
        epochs = sorted({float(x) for xs, _ in series for x in xs})
        grid = np.full((len(series), len(epochs)), np.nan)
        for i, (xs, ys) in enumerate(series):
            for x, y in zip(xs, ys):
                grid[i, epochs.index(float(x))] = y
        xs_all = np.asarray(epochs) + 1  # 1-based epochs, as in the paper
        all_xs.append(xs_all)
        with np.errstate(all="ignore"):
            mean = np.nanmean(grid, axis=0)
            low, high = np.nanmin(grid, axis=0), np.nanmax(grid, axis=0)
        for row in grid:
            ax.plot(xs_all, row, color=colours[name], linewidth=0.8, alpha=0.3)
        if len(series) > 1:
            ax.fill_between(xs_all, low, high, color=colours[name], alpha=0.15, linewidth=0)
        marker = "o" if len(xs_all) <= 3 else None
        ax.plot(xs_all, mean, color=colours[name], linewidth=2.5, marker=marker,
                label=f"{name} (mean of {len(series)} seed{'' if len(series) == 1 else 's'}"
                      f"{', band: min-max' if len(series) > 1 else ''})")
    if not any_data:
        ax.text(0.5, 0.5, f"no '{key}' values recorded", ha="center", va="center", transform=ax.transAxes)
    _epoch_axis(ax, all_xs)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)


def select_axial_slice(gt: np.ndarray, predictions: Mapping[str, np.ndarray] | None = None) -> int:
    """Index z of the axial slice ``gt[z]`` with the largest ground-truth area.

    Ties go to the lowest index. With an empty ground truth, the slice with the largest area of any
    prediction; with everything empty, the middle slice.

    Args:
        gt: (Z, Y, X) mask.
        predictions: optional (Z, Y, X) masks, used only when ``gt`` is empty.
    """
    gt = np.asarray(gt)
    if gt.ndim != 3:
        raise ValueError(f"expected a (Z, Y, X) mask, got shape {gt.shape}")
    area = np.count_nonzero(gt, axis=(1, 2))
    if area.max(initial=0) == 0 and predictions:
        area = sum(np.count_nonzero(np.asarray(p), axis=(1, 2)) for p in predictions.values())
    if np.max(area, initial=0) == 0:
        return gt.shape[0] // 2
    return int(np.argmax(area))


def _overlay_rgba(gt: np.ndarray, pred: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    rgba = np.zeros(gt.shape + (4,), dtype=np.float32)
    for mask, colour in ((gt & ~pred, GT_COLOUR), (pred & ~gt, PRED_COLOUR), (gt & pred, OVERLAP_COLOUR)):
        rgba[mask, :3] = colour
        rgba[mask, 3] = alpha
    return rgba


def _check_case(case: OverlayCase) -> None:
    shape = np.shape(case.image)
    if len(shape) != 3:
        raise ValueError(f"{case.case_id}: image must be (Z, Y, X), got shape {shape}")
    if np.shape(case.gt) != shape:
        raise ValueError(f"{case.case_id}: ground truth shape {np.shape(case.gt)} != image shape {shape}")
    for name, pred in case.predictions.items():
        if np.shape(pred) != shape:
            raise ValueError(f"{case.case_id}: prediction of {name} has shape {np.shape(pred)} != image {shape}")


def plot_overlays(cases: Sequence[OverlayCase], path: str | Path, max_cases: int = MAX_OVERLAY_CASES) -> Path:
    """The paper's Fig. 4: ground truth (green) and prediction (red) on an axial CT slice.

    One row per case (the first ``max_cases``), one column per model (order of the first case's
    ``predictions``). Each row shows the slice with the largest ground-truth area
    (:func:`select_axial_slice`) in grey (1st-99th percentile window of that slice), the masks as
    semi-transparent fills (overlap yellow) with their contours, the title "model - case, Dice".
    Radiological display: patient right on the viewer's left, labelled R/L (see module docstring).

    Args:
        cases: the cases; arrays (Z, Y, X) in canonical orientation.
        path: output PNG.
        max_cases: at most this many rows.

    Returns:
        ``path`` as a Path.

    Raises:
        ValueError: no case, or arrays of different shapes within a case.
    """
    from matplotlib.patches import Patch

    from kidneyssl.metrics import dice as metric_dice

    cases = list(cases)[:max_cases]
    if not cases:
        raise ValueError("plot_overlays needs at least one case")
    for case in cases:
        _check_case(case)
    models: list[str] = []
    for case in cases:
        models += [m for m in case.predictions if m not in models]
    ncols = max(1, len(models))
    # constrained layout keeps the two-line titles clear of the fixed-aspect images above them
    fig = new_figure(3.6 * ncols, 4.0 * len(cases) + 0.8, layout="constrained")
    for r, case in enumerate(cases):
        gt = np.asarray(case.gt) > 0
        preds = {m: np.asarray(p) > 0 for m, p in case.predictions.items()}
        z = select_axial_slice(gt, preds)
        image = np.asarray(case.image[z], dtype=np.float32)
        vmin, vmax = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
        aspect = 1.0 if case.spacing_mm is None else float(case.spacing_mm[1]) / float(case.spacing_mm[2])
        for c, model in enumerate(models):
            ax = fig.add_subplot(len(cases), ncols, r * ncols + c + 1)
            ax.imshow(image, cmap="gray", vmin=vmin, vmax=max(vmax, vmin + 1e-6), aspect=aspect,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if model not in preds:
                ax.set_title(f"{model} - {case.case_id}\n(no prediction)", fontsize=9)
                continue
            pred = preds[model]
            ax.imshow(_overlay_rgba(gt[z], pred[z]), aspect=aspect, interpolation="nearest")
            # ground-truth contour wider and below, so it still shows where the prediction matches it
            for mask, colour, width in ((gt[z], GT_COLOUR, 2.2), (pred[z], PRED_COLOUR, 0.9)):
                if mask.any() and not mask.all():
                    ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=width)
            dice = (case.dice or {}).get(model)
            dice = metric_dice(pred, gt) if dice is None else float(dice)
            ax.set_title(f"{model} - {case.case_id}, z={z}\nDice {dice:.3f}", fontsize=9)
            for text, xy, ha, va in (("R", (0.02, 0.5), "left", "center"), ("L", (0.98, 0.5), "right", "center"),
                                     ("A", (0.5, 0.98), "center", "top"), ("P", (0.5, 0.02), "center", "bottom")):
                ax.text(*xy, text, transform=ax.transAxes, ha=ha, va=va, color="white", fontsize=10,
                        fontweight="bold")
    handles = [Patch(color=GT_COLOUR, label="ground truth"), Patch(color=PRED_COLOUR, label="prediction"),
               Patch(color=OVERLAP_COLOUR, label="overlap")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle("Axial slices with the largest ground-truth area (cf. paper Fig. 4)", fontsize=10)
    return save_figure(fig, path)


def refresh_history_plot(run_dir: str | Path, history: Sequence[Mapping[str, Any]]) -> None:
    """Rewrite ``run_dir/history.png`` from the history rows; a failure is logged, never raised
    (the epoch hook the CLI gives training: a plot must never stop a run)."""
    try:
        plot_history(history, Path(run_dir) / "history.png")
    except Exception as err:  # noqa: BLE001 - any plotting failure means the same here
        log.warning("could not plot %s: %s", Path(run_dir) / "history.png", err)
