"""Overlap metrics on binary 3-D masks: the Dice coefficient, plus the input checks all metrics share.

Empty-mask policy of :func:`dice` (stated here because it changes means):

* both masks empty -> 1.0 (nothing to find, nothing found: a perfect answer);
* exactly one empty -> 0.0 (a missed structure, or a hallucinated one).

MONAI's ``DiceMetric`` returns NaN for an empty ground truth by default (``ignore_empty=True``);
we return a number so that a missed case always counts in a mean.
"""

from __future__ import annotations

import numpy as np

__all__ = ["dice", "as_binary_pair"]


def as_binary_pair(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate two masks and return them as boolean arrays (no copy for bool input).

    Args:
        pred, gt: (Z, Y, X) masks, bool or integer/float; any non-zero voxel is foreground.

    Raises:
        ValueError: if either is not 3-D or the shapes differ.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 3 or gt.ndim != 3:
        raise ValueError(f"masks must be 3-D (Z, Y, X), got shapes {pred.shape} and {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
    return (pred if pred.dtype == bool else pred != 0), (gt if gt.dtype == bool else gt != 0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice similarity coefficient 2|P∩G| / (|P| + |G|) of two binary masks.

    Args:
        pred, gt: (Z, Y, X) masks of equal shape; non-zero is foreground.

    Returns:
        Dice in [0, 1]. Both empty -> 1.0; exactly one empty -> 0.0.

    Example:
        >>> a = np.zeros((1, 1, 4), bool); a[0, 0, :2] = True
        >>> b = np.zeros((1, 1, 4), bool); b[0, 0, 1:] = True
        >>> dice(a, b)  # 2*1 / (2 + 3)
        0.4
    """
    p, g = as_binary_pair(pred, gt)
    n_p = int(np.count_nonzero(p))
    n_g = int(np.count_nonzero(g))
    if n_p + n_g == 0:
        return 1.0
    inter = int(np.count_nonzero(p & g))
    return 2.0 * inter / (n_p + n_g)
