"""Tests of kidneyssl.reporting.figures: valid PNGs, moving average, slice choice, overlays drawn."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
import pytest

from kidneyssl.reporting.figures import (
    DPI,
    GT_COLOUR,
    PRED_COLOUR,
    OverlayCase,
    moving_average,
    plot_dice_curves,
    plot_history,
    plot_overlays,
    select_axial_slice,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; asserts the file is a PNG."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def colour_pixels(path: Path, colour: tuple[float, float, float], tol: float = 0.12) -> int:
    from matplotlib.image import imread

    rgb = imread(str(path))[..., :3]
    return int((np.abs(rgb - np.asarray(colour)).max(axis=-1) < tol).sum())


# ------------------------------------------------------------------------------ moving average
@pytest.mark.parametrize(
    ("values", "window", "expected"),
    [
        ([1, 2, 3, 4, 5], 2, [1, 1.5, 2.5, 3.5, 4.5]),
        ([1, 2, 3, 4, 5], 3, [1, 1.5, 2, 3, 4]),
        ([1, 2, 3, 4, 5], 1, [1, 2, 3, 4, 5]),
        ([1, 2, 3, 4, 5], 50, [1, 1.5, 2, 2.5, 3]),  # window clipped to the number of values
        ([1, math.nan, 3, 5], 2, [1, 1, 3, 4]),  # NaN ignored inside a window
        ([0.7], 5, [0.7]),
    ],
)
def test_moving_average_values(values, window, expected):
    np.testing.assert_allclose(moving_average(values, window), expected)


def test_moving_average_all_nan_window_is_nan_and_bad_window_raises():
    out = moving_average([math.nan, math.nan, 2.0], 2)
    assert math.isnan(out[0]) and math.isnan(out[1]) and out[2] == 2.0
    assert moving_average([], 5).shape == (0,)
    with pytest.raises(ValueError, match="window"):
        moving_average([1.0, 2.0], 0)


# ------------------------------------------------------------------------------ slice choice
def test_select_axial_slice_largest_gt_area():
    gt = np.zeros((5, 8, 8), dtype=np.uint8)
    gt[1, :2, :2] = 1  # area 4
    gt[3, 2:5, 2:5] = 1  # area 9  <- largest
    gt[4, 0, :8] = 1  # area 8
    assert select_axial_slice(gt) == 3
    # a large prediction elsewhere does not change the choice while the ground truth is not empty
    pred = np.zeros_like(gt)
    pred[0] = 1
    assert select_axial_slice(gt, {"m": pred}) == 3


def test_select_axial_slice_ties_empty_gt_and_all_empty():
    gt = np.zeros((6, 4, 4), dtype=bool)
    gt[2, 0, :2] = gt[4, 1, :2] = True  # tie -> lowest index
    assert select_axial_slice(gt) == 2
    empty = np.zeros((6, 4, 4), dtype=bool)
    pred = empty.copy()
    pred[5, :3, :3] = True
    assert select_axial_slice(empty, {"m": pred}) == 5
    assert select_axial_slice(empty, {"m": empty}) == 3
    with pytest.raises(ValueError):
        select_axial_slice(np.zeros((4, 4)))


# ------------------------------------------------------------------------------ history
def test_plot_history_segmentation_rows_with_nan_and_missing_keys(tmp_path):
    rows = [
        {"epoch": e, "train_loss": 1.0 / (e + 1), "val_dice": 0.5 + 0.05 * e, "w_bce": 0.6 - 0.1 * e,
         "w_dice": 0.4 + 0.1 * e, "seconds": 2.0, "note": "text is ignored"}
        for e in range(5)
    ]
    rows[2]["val_dice"] = math.nan
    rows[3]["val_dice"] = None
    del rows[4]["w_bce"]
    path = plot_history(rows, tmp_path / "sub" / "history.png")
    assert path == tmp_path / "sub" / "history.png"
    # 4 panels -> 3 columns x 2 rows of 4.2 x 3.2 inches (+0.4 for the title)
    assert png_size(path) == (round(3 * 4.2 * DPI), round((2 * 3.2 + 0.4) * DPI))
    assert not list(path.parent.glob(".*tmp*")), "atomic temporary file left behind"


def test_plot_history_single_epoch_siamese_and_empty(tmp_path):
    one = plot_history([{"epoch": 0, "train_loss": 0.5, "val_loss": 0.6, "val_accuracy": 0.7}], tmp_path / "a.png")
    assert png_size(one) == (round(2 * 4.2 * DPI), round((3.2 + 0.4) * DPI))  # 2 panels
    empty = plot_history([], tmp_path / "b.png")
    assert png_size(empty)[0] > 100
    # refreshed in place
    again = plot_history([{"epoch": 0, "train_loss": 0.5}, {"epoch": 1, "train_loss": 0.4}], tmp_path / "a.png")
    assert png_size(again) == (round(4.2 * DPI), round((3.2 + 0.4) * DPI))


# ------------------------------------------------------------------------------ Fig. 5
def test_plot_dice_curves_two_models_and_single_epoch(tmp_path):
    rows = [{"epoch": e, "val_dice": 0.6 + 0.02 * e} for e in range(8)]
    path = plot_dice_curves({"MwoS": rows, "MwS": rows[:1] + [{"epoch": 1, "val_dice": math.nan}]},
                            tmp_path / "fig5.png", window=5)
    assert png_size(path) == (round(7.0 * DPI), round(4.6 * DPI))
    assert colour_pixels(path, (0.12, 0.47, 0.71)) > 50  # tab:blue drawn (MwoS)
    nodata = plot_dice_curves({"MwoS": [{"epoch": 0, "train_loss": 1.0}]}, tmp_path / "none.png")
    assert png_size(nodata) == (round(7.0 * DPI), round(4.6 * DPI))
    with pytest.raises(ValueError, match="window"):
        plot_dice_curves({"MwoS": rows}, tmp_path / "bad.png", window=0)


# ------------------------------------------------------------------------------ Fig. 4
def _phantom_case(case_id: str, shift: int, empty_pred: bool = False) -> OverlayCase:
    z, y, x = np.mgrid[:12, :40, :40]
    image = (((y - 20) ** 2 + (x - 20) ** 2) < 18**2).astype(np.float32) + 0.05 * np.sin(x + y)
    gt = ((z - 6) ** 2 / 9 + (y - 22) ** 2 / 25 + (x - 10) ** 2 / 9) < 1
    pred = np.zeros_like(gt) if empty_pred else np.roll(gt, shift, axis=2)
    return OverlayCase(case_id, image, gt.astype(np.uint8), {"MwoS": pred, "MwS": gt.copy()},
                       dice={"MwoS": 0.5}, spacing_mm=(3.0, 1.6, 1.6))


def test_plot_overlays_grid_size_and_masks_drawn(tmp_path):
    cases = [_phantom_case(f"case_{i:05d}", shift=i + 1) for i in range(4)]  # only 3 are shown
    path = plot_overlays(cases, tmp_path / "fig4.png")
    assert png_size(path) == (round(2 * 3.6 * DPI), round((3 * 4.0 + 0.8) * DPI))
    assert colour_pixels(path, GT_COLOUR) > 20
    assert colour_pixels(path, PRED_COLOUR) > 20


def test_plot_overlays_empty_prediction_draws_no_red_and_shapes_checked(tmp_path):
    case = _phantom_case("case_00000", shift=0, empty_pred=True)
    case.predictions = {"MwoS": case.predictions["MwoS"]}
    path = plot_overlays([case], tmp_path / "fig4.png")
    assert png_size(path) == (round(3.6 * DPI), round((4.0 + 0.8) * DPI))
    # the legend patch is the only red: far fewer pixels than a drawn prediction
    legend_only = colour_pixels(path, PRED_COLOUR)
    drawn = colour_pixels(plot_overlays([_phantom_case("c", shift=2)], tmp_path / "b.png"), PRED_COLOUR)
    assert legend_only < drawn
    bad = _phantom_case("case_bad", shift=1)
    bad.predictions["MwS"] = bad.predictions["MwS"][:-1]
    with pytest.raises(ValueError, match="case_bad.*MwS"):
        plot_overlays([bad], tmp_path / "c.png")
    with pytest.raises(ValueError):
        plot_overlays([], tmp_path / "d.png")
