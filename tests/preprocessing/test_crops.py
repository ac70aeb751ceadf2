"""Fixed-size kidney crops, zero-padded at the borders."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.preprocessing.crops import crop_padded, kidney_crop


def test_crop_inside_equals_slice():
    image = np.arange(10 * 12 * 14, dtype=np.float32).reshape(10, 12, 14)
    crop = kidney_crop(image, center=(5, 6, 7), size=(4, 6, 8))
    np.testing.assert_array_equal(crop, image[3:7, 3:9, 3:11])


def test_crop_at_volume_borders_is_zero_padded():
    image = np.arange(1, 5 * 6 * 7 + 1, dtype=np.float32).reshape(5, 6, 7)
    crop = kidney_crop(image, center=(0, 0, 0), size=(2, 2, 2))  # box starts at (-1, -1, -1)
    assert crop.shape == (2, 2, 2)
    assert crop[1, 1, 1] == image[0, 0, 0] == 1.0
    assert crop[0].sum() == 0 and crop[:, 0].sum() == 0 and crop[:, :, 0].sum() == 0
    far = kidney_crop(image, center=(4, 5, 6), size=(4, 4, 4))  # box [2, 6) x [3, 7) x [4, 8)
    np.testing.assert_array_equal(far[:3, :3, :3], image[2:5, 3:6, 4:7])
    assert far[3].sum() == 0 and far[:, 3].sum() == 0 and far[:, :, 3].sum() == 0
    assert not kidney_crop(image, center=(50, 50, 50), size=(2, 2, 2)).any()
    assert crop_padded(image, (-3, 0, 0), (3, 2, 2)).sum() == 0


def test_crop_mask_outside():
    image = np.full((6, 6, 6), 2.0, dtype=np.float32)
    label = np.zeros((6, 6, 6), dtype=np.uint8)
    label[2:4, 2:4, 2:4] = 2  # tumour counts as kidney
    crop = kidney_crop(image, (3, 3, 3), (4, 4, 4), label=label, mask_outside=True)
    assert crop.sum() == 2.0 * 8 and crop[1:3, 1:3, 1:3].min() == 2.0
    assert kidney_crop(image, (3, 3, 3), (4, 4, 4), label=label).sum() == 2.0 * 64  # default: off
    with pytest.raises(ValueError, match="needs the label"):
        kidney_crop(image, (3, 3, 3), (4, 4, 4), mask_outside=True)
