"""threshold_probabilities, bounding_box, largest_component_per_side."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.inference.postprocess import (
    largest_component_per_side,
    threshold_probabilities,
)
from kidneyssl.preprocessing.spatial import bounding_box


def test_threshold_inclusive_and_uint8():
    prob = np.array([0.1, 0.5, 0.49, 0.9], dtype=np.float32).reshape(1, 1, 4)
    out = threshold_probabilities(prob, 0.5)
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [0, 1, 0, 1]
    with pytest.raises(ValueError):
        threshold_probabilities(prob, 1.5)


def test_bounding_box():
    m = np.zeros((5, 6, 7), np.uint8)
    assert bounding_box(m) is None
    m[1, 2, 3] = m[3, 4, 5] = 1
    assert bounding_box(m) == (slice(1, 4), slice(2, 5), slice(3, 6))


def _scene() -> np.ndarray:
    m = np.zeros((10, 10, 40), np.uint8)
    m[2:8, 2:8, 2:10] = 1      # right kidney, 288 voxels
    m[1, 1, 14] = 1            # right speck
    m[2:8, 2:8, 28:36] = 1     # left kidney, 288
    m[4:6, 4:6, 22:24] = 1     # left blob, 8 voxels
    return m


def test_keeps_one_component_per_side():
    out = largest_component_per_side(_scene(), split_x=20)
    assert out.dtype == np.uint8
    assert out.sum() == 2 * 288
    assert out[1, 1, 14] == 0 and out[4, 4, 22] == 0
    assert out[5, 5, 5] == 1 and out[5, 5, 30] == 1


def test_diagonal_neighbours_are_connected():
    m = np.zeros((4, 4, 8), np.uint8)
    m[1, 1, 1] = m[2, 2, 2] = 1  # touch at a corner only
    m[0, 0, 3] = 1               # 1 voxel apart: a separate component
    out = largest_component_per_side(m, split_x=8)
    assert out.sum() == 2


def test_kidney_crossing_the_plane_is_kept_whole():
    m = np.zeros((6, 6, 40), np.uint8)
    m[1:5, 1:5, 14:26] = 1   # centroid x = 19.5, crosses split 18
    m[2:4, 2:4, 30:32] = 1   # small blob on the same (left) side
    m[2:4, 2:4, 2:4] = 1     # the right side's only component
    out = largest_component_per_side(m, split_x=18)
    assert out[1:5, 1:5, 14:26].all()
    assert out[2:4, 2:4, 30:32].sum() == 0
    assert out[2:4, 2:4, 2:4].all()


def test_fractional_plane_and_other_lateral_axis():
    m = np.moveaxis(_scene(), 2, 0)  # lateral axis is now 0
    out = largest_component_per_side(m, split_x=19.7, lateral_axis=0)
    assert out.sum() == 2 * 288


def test_min_relative_size_drops_a_speck_opposite_a_kidney():
    m = np.zeros((10, 10, 40), np.uint8)
    m[2:8, 2:8, 2:10] = 1
    m[4:6, 4:6, 30:32] = 1  # 8 voxels, < 10% of 288
    assert largest_component_per_side(m, 20).sum() == 296
    assert largest_component_per_side(m, 20, min_relative_size=0.1).sum() == 288


def test_empty_and_input_untouched():
    m = np.zeros((3, 3, 3), np.uint8)
    assert largest_component_per_side(m, 1).sum() == 0
    scene = _scene()
    before = scene.copy()
    largest_component_per_side(scene, 20)
    np.testing.assert_array_equal(scene, before)
    with pytest.raises(ValueError, match="3-D"):
        largest_component_per_side(np.zeros((3, 3)), 1)
