"""Resampling (vs torch's kernels), label resampling, padding, and their inverses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kidneyssl.preprocessing.spatial import (
    Padding,
    pad_to_multiple,
    resample_to_shape,
    resample_to_spacing,
    resampled_affine,
    resampled_shape,
    unpad,
)

RNG = np.random.default_rng(0)


def _torch(a: np.ndarray, shape, mode: str) -> np.ndarray:
    kwargs = {} if mode == "nearest-exact" else {"align_corners": False}
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None]
    return F.interpolate(t, size=tuple(shape), mode=mode, **kwargs)[0, 0].numpy()


def test_resampled_shape_and_spacing():
    assert resampled_shape((300, 512, 512), (1.0, 0.8, 0.8), (3.22, 1.62, 1.62)) == (93, 253, 253)
    assert resampled_shape((2, 3, 4), (1, 1, 1), (100, 100, 100)) == (1, 1, 1)
    out, actual = resample_to_spacing(np.zeros((30, 20, 10), np.int16), (1.0, 2.0, 3.0), (3.0, 1.0, 3.0))
    assert out.shape == (10, 40, 10)
    assert actual == pytest.approx((3.0, 1.0, 3.0))


def test_resampled_affine_keeps_field_of_view():
    affine = np.array([[0, 0, -0.8, 10], [0, -0.8, 0, 20], [-1.0, 0, 0, 30], [0, 0, 0, 1.0]])
    new = resampled_affine(affine, (300, 512, 512), (93, 253, 253))
    # outer voxel edges coincide: index -0.5 and n - 0.5 map to the same world points
    for old_idx, new_idx in (([-0.5] * 3, [-0.5] * 3), ([299.5, 511.5, 511.5], [92.5, 252.5, 252.5])):
        np.testing.assert_allclose(affine @ [*old_idx, 1], new @ [*new_idx, 1], atol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(new[:3, :3], axis=0), [300 / 93, 0.8 * 512 / 253, 0.8 * 512 / 253])


@pytest.mark.parametrize("shape", [(9, 40, 13), (17, 11, 50), (5, 23, 29)])
@pytest.mark.parametrize("layout", ["C", "F"])
def test_linear_equals_torch_trilinear(shape, layout):
    a = RNG.normal(size=(17, 23, 29)).astype(np.float32)
    a = np.asfortranarray(a) if layout == "F" else a
    np.testing.assert_allclose(resample_to_shape(a, shape), _torch(a, shape, "trilinear"), atol=2e-5)


def test_int16_input_is_converted_exactly():
    a = RNG.integers(-1000, 1000, (12, 14, 16)).astype(np.int16)
    np.testing.assert_allclose(resample_to_shape(a, (5, 7, 9)), _torch(a, (5, 7, 9), "trilinear"), atol=1e-3)


def test_nearest_equals_torch_nearest_exact():
    a = RNG.normal(size=(11, 13, 15)).astype(np.float32)
    np.testing.assert_array_equal(resample_to_shape(a, (7, 20, 4), order="nearest"),
                                  _torch(a, (7, 20, 4), "nearest-exact"))


def test_cubic_equals_torch_bicubic_on_each_pass():
    a = RNG.normal(size=(20, 8, 6)).astype(np.float32)
    # slow axis (numpy pass) vs torch's bicubic over (axis 0, axis 1)
    ours = resample_to_shape(a, (7, 8, 6), order="cubic")
    ref = F.interpolate(torch.from_numpy(a).permute(2, 0, 1)[:, None], size=(7, 8), mode="bicubic",
                        align_corners=False)[:, 0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(ours, ref, atol=2e-5)


def test_linear_reproduces_a_ramp_and_cubic_a_constant():
    z = np.arange(40, dtype=np.float32)
    a = np.broadcast_to(z[:, None, None] * 2.0 + 5.0, (40, 6, 6)).copy()
    out = resample_to_shape(a, (16, 6, 6), order="linear")
    expected = ((np.arange(16) + 0.5) * 40 / 16 - 0.5) * 2.0 + 5.0
    np.testing.assert_allclose(out[:, 3, 3], expected, atol=1e-4)
    # a = -0.75 (torch/OpenCV) cubic convolution: exact on constants, not on ramps
    np.testing.assert_allclose(resample_to_shape(np.full((9, 7, 5), 3.5), (4, 13, 2), order="cubic"), 3.5, atol=1e-5)


def test_label_resampling_invents_no_values():
    labels = RNG.choice(np.array([0, 1, 2], np.uint8), size=(12, 15, 17), p=[0.6, 0.3, 0.1])
    for order in ("linear", "nearest"):
        for shape in ((5, 7, 8), (25, 31, 40)):
            out = resample_to_shape(labels, shape, order=order, is_label=True)
            assert out.dtype == np.uint8 and out.shape == shape
            assert set(np.unique(out)) <= {0, 1, 2}


def test_binary_label_linear_threshold_round_trip_exact_for_factor_two():
    mask = np.zeros((8, 10, 12), np.uint8)
    mask[2:6, 3:8, 4:9] = 1
    up = resample_to_shape(mask, (16, 20, 24), is_label=True)
    # each coarse voxel -> 2x2x2; only the 8 outer corners drop out (0.75**3 < 0.5, trilinear)
    assert up.sum() == mask.sum() * 8 - 8
    np.testing.assert_array_equal(resample_to_shape(up, mask.shape, is_label=True), mask)


def test_label_value_and_multilabel_argmax():
    lab = np.zeros((6, 6, 6), np.uint8)
    lab[:, :, :3] = 3
    lab[:, :, 3:] = 5
    out = resample_to_shape(lab, (6, 6, 12), is_label=True)
    np.testing.assert_array_equal(out[0, 0], [3] * 6 + [5] * 6)
    only = np.where(lab == 3, 3, 0).astype(np.uint8)
    np.testing.assert_array_equal(resample_to_shape(only, (6, 6, 12), is_label=True)[0, 0], [3] * 6 + [0] * 6)


def test_threshold_and_antialias_options():
    prob = np.zeros((4, 4, 8), np.float32)
    prob[..., 4:] = 1.0
    mask = resample_to_shape(prob, (4, 4, 16), threshold=0.5)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask[0, 0], [0] * 8 + [1] * 8)
    stripes = np.zeros((1, 1, 8), np.float32)
    stripes[..., ::2] = 1.0
    # 2:1 downsampling: plain linear samples between pairs, anti-aliased averages a wider window
    np.testing.assert_allclose(resample_to_shape(stripes, (1, 1, 4))[0, 0], 0.5)
    aa = resample_to_shape(stripes, (1, 1, 2), antialias=True)[0, 0]
    np.testing.assert_allclose(aa, 0.5, atol=0.1)


def test_resample_errors():
    with pytest.raises(ValueError, match="order"):
        resample_to_shape(np.zeros((2, 2, 2)), (3, 3, 3), order="quintic")
    with pytest.raises(ValueError, match="label order"):
        resample_to_shape(np.zeros((2, 2, 2), np.uint8), (3, 3, 3), order="cubic", is_label=True)
    with pytest.raises(ValueError, match="integer dtype"):
        resample_to_shape(np.zeros((2, 2, 2), np.float32), (3, 3, 3), is_label=True)
    with pytest.raises(ValueError, match="3-D"):
        resample_to_shape(np.zeros((2, 2)), (3, 3, 3))


def test_pad_to_multiple_symmetric_and_unpad():
    a = RNG.normal(size=(5, 16, 19)).astype(np.float32)
    padded, pad = pad_to_multiple(a, 16)
    assert padded.shape == (16, 16, 32)
    assert pad == Padding((5, 0, 6), (6, 0, 7))
    assert padded[:5].sum() == 0 and padded[-6:].sum() == 0
    np.testing.assert_array_equal(unpad(padded, pad), a)
    assert Padding.from_dict(pad.to_dict()) == pad


def test_pad_to_multiple_end_mode_and_errors():
    padded, pad = pad_to_multiple(np.ones((3, 4, 5), np.uint8), 4, mode="end")
    assert padded.shape == (4, 4, 8) and pad.before == (0, 0, 0) and pad.after == (1, 0, 3)
    with pytest.raises(ValueError):
        pad_to_multiple(np.ones((3, 4, 5)), 0)
    with pytest.raises(ValueError):
        pad_to_multiple(np.ones((3, 4, 5)), 4, mode="middle")
