"""The one definition of a half volume: bounds, split and exact stitching."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.halves import half_bounds, split_halves, stitch_halves


@pytest.mark.parametrize("split_x", [0, 1, 17, 32, 63, 64])
@pytest.mark.parametrize("context", [0, 5, 40])
@pytest.mark.parametrize("multiple", [1, 16])
def test_halves_stitch_back_exactly(split_x, context, multiple):
    rng = np.random.default_rng(split_x * 100 + context)
    a = rng.normal(size=(3, 5, 64)).astype(np.float32)
    halves = split_halves(a, split_x, context, multiple)
    right_width = -(-(split_x + context) // multiple) * multiple
    left_width = -(-(64 - split_x + context) // multiple) * multiple
    assert halves[Side.RIGHT].shape[-1] == min(64, right_width)
    assert halves[Side.LEFT].shape[-1] == min(64, left_width)
    if multiple == 16:  # a grid that is a multiple of 16 gives halves that need no padding
        assert all(h.shape[-1] % 16 == 0 for h in halves.values())
    np.testing.assert_array_equal(halves[Side.RIGHT][..., :split_x], a[..., :split_x])
    back = stitch_halves(halves, split_x, 64, context, multiple)
    assert back.dtype == a.dtype
    np.testing.assert_array_equal(back, a)


def test_stitch_takes_each_sides_own_columns_and_checks_widths():
    a = np.arange(2 * 3 * 10, dtype=np.float32).reshape(1, 2, 3, 10)  # a leading channel axis
    halves = {s: h.copy() for s, h in split_halves(a, 4, context=2).items()}
    halves[Side.RIGHT][..., 4:] = -1  # context columns of the right half belong to the left side
    halves[Side.LEFT][..., :2] = -1
    np.testing.assert_array_equal(stitch_halves(halves, 4, 10, context=2), a)
    assert half_bounds(10, 4, 2) == {Side.RIGHT: slice(0, 6), Side.LEFT: slice(2, 10)}
    with pytest.raises(ValueError, match="width"):
        stitch_halves({Side.RIGHT: a[..., :5], Side.LEFT: a[..., 4:]}, 4, 10)
    with pytest.raises(ValueError, match="missing"):
        stitch_halves({Side.RIGHT: a[..., :4]}, 4, 10)
    with pytest.raises(ValueError, match="outside"):
        split_halves(a, 11)
