import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric

from kidneyssl.metrics import dice
from kidneyssl.preprocessing.spatial import bounding_box


def _line(n: int, on: list[int]) -> np.ndarray:
    m = np.zeros((1, 1, n), dtype=bool)
    m[0, 0, on] = True
    return m


@pytest.mark.parametrize(
    "pred_on, gt_on, expected",
    [
        ([0, 1], [1, 2, 3], 2 * 1 / 5),  # overlap 1, sizes 2 and 3
        ([0, 1, 2], [0, 1, 2], 1.0),
        ([0], [3], 0.0),  # disjoint
        ([], [], 1.0),  # both empty -> 1
        ([], [2], 0.0),  # missed
        ([2], [], 0.0),  # hallucinated
        ([0, 1, 2, 3], [1, 2], 2 * 2 / 6),
    ],
)
def test_dice_hand_computed(pred_on, gt_on, expected):
    assert dice(_line(4, pred_on), _line(4, gt_on)) == pytest.approx(expected, abs=1e-12)


def test_dice_accepts_integer_labels_as_foreground():
    gt = np.array([0, 1, 2, 2, 0], dtype=np.uint8).reshape(1, 1, 5)
    pred = np.array([0, 1, 1, 0, 0], dtype=np.uint8).reshape(1, 1, 5)
    assert dice(pred, gt) == pytest.approx(2 * 2 / 5)


def test_dice_matches_monai(blob_pairs):
    metric = DiceMetric(include_background=True, reduction="none")
    for pred, gt in blob_pairs:
        ref = metric(torch.from_numpy(pred)[None, None].float(), torch.from_numpy(gt)[None, None].float())
        assert dice(pred, gt) == pytest.approx(float(ref.item()), abs=1e-6)


def test_shape_mismatch_and_non_3d_raise():
    with pytest.raises(ValueError, match="differs"):
        dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="3-D"):
        dice(np.zeros((2, 2)), np.zeros((2, 2)))


def test_bounding_box_of_two_masks_with_margin_is_clipped_to_array():
    a = np.zeros((5, 6, 7), bool)
    b = np.zeros_like(a)
    a[0, 2, 3] = True
    b[2, 4, 6] = True
    assert bounding_box(a, b, margin=1) == (slice(0, 4), slice(1, 6), slice(2, 7))
    assert bounding_box(np.zeros_like(a), np.zeros_like(a)) is None
