"""HU window clipping and z-score."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.preprocessing.intensity import clip_window, zscore, zscore_stats


def test_clip_window_values():
    x = np.array([-1000, -80, 0, 299, 300, 2000], dtype=np.int16)
    out = clip_window(x, (-80, 300))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [-80, -80, 0, 299, 300, 300])
    assert x[0] == -1000  # input untouched


def test_clip_window_in_place():
    x = np.array([[-500.0, 50.0, 900.0]], dtype=np.float32)
    out = clip_window(x, (-80, 300), out=x)
    assert out is x
    np.testing.assert_array_equal(x, [[-80, 50, 300]])


def test_clip_window_rejects_bad_window():
    with pytest.raises(ValueError, match="low < high"):
        clip_window(np.zeros(3), (300, -80))


def test_zscore_values():
    x = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    out, mean, std = zscore(x)
    assert mean == pytest.approx(2.5) and std == pytest.approx(np.sqrt(1.25))
    np.testing.assert_allclose(out, (x - 2.5) / np.sqrt(1.25), rtol=1e-6)
    assert out.dtype == np.float32
    assert zscore_stats(x) == (pytest.approx(2.5), pytest.approx(np.sqrt(1.25)))


def test_zscore_given_stats_and_constant_volume():
    out, mean, std = zscore(np.array([10, 20], dtype=np.int16), mean=10.0, std=5.0)
    np.testing.assert_allclose(out, [0, 2])
    out, mean, std = zscore(np.full((2, 2), 7.0))
    assert std == 0.0
    np.testing.assert_array_equal(out, 0)  # centred, no division by zero


def test_zscore_empty_raises():
    with pytest.raises(ValueError, match="empty"):
        zscore(np.zeros((0,)))
