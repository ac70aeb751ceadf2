"""infer_volume: halves, sliding window and whole volume agree; flips, bf16, padding, budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kidneyssl.config import InferenceConfig
from kidneyssl.inference.sliding_window import infer_volume, probability_predictor
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.halves import half_bounds


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


@pytest.mark.parametrize(
    "width, split, context, expected",
    [
        (64, 32, 0, ((0, 32), (32, 64))),
        (64, 32, 5, ((0, 48), (16, 64))),
        (64, 30, 3, ((0, 48), (16, 64))),  # 33 -> 48 ; 34+3=37 -> 48 -> start 16
        (64, 30, 40, ((0, 64), (0, 64))),  # clamped to the volume
        (64, 0, 0, ((0, 0), (0, 64))),
    ],
)
def test_half_bounds(width, split, context, expected):
    bounds = half_bounds(width, split, context, 16)
    right, left = bounds[Side.RIGHT], bounds[Side.LEFT]
    assert ((right.start, right.stop), (left.start, left.stop)) == expected
    assert (right.stop - right.start) % 16 == 0 and (left.stop - left.start) % 16 == 0


def test_half_bounds_rejects_split_outside():
    with pytest.raises(ValueError, match="split_x"):
        half_bounds(64, 65, 0)


def test_halves_with_context_equal_whole_volume(box_predictor, blob_image):
    cfg = InferenceConfig(half_context_mm=4.0)  # 4 mm / 2 mm = 2 voxels = the filter radius
    whole = infer_volume(box_predictor, blob_image, cfg, split_x=30, strategy="whole")
    halves = infer_volume(box_predictor, blob_image, cfg, split_x=30, strategy="halves",
                          spacing_mm=(2.0, 2.0, 2.0))
    assert whole.dtype == np.float32 and whole.shape == blob_image.shape
    np.testing.assert_allclose(halves, whole, atol=1e-6)
    # two half inputs, each a multiple of 16 wide and reaching >= 2 voxels across the plane:
    # right 30 + 2 -> 32, left 34 + 2 -> 48
    assert [s[-1] for s in box_predictor.shapes[1:]] == [32, 48]
    assert 0.0 <= whole.min() and whole.max() <= 1.0


def test_halves_without_context_differ_at_the_plane(box_predictor, make_blob_image):
    # split at 32 with no context: each half is exactly 32 wide, so the filter sees zero padding
    # at the plane -> differs from whole there, identical far from it.
    img = make_blob_image(seed=1) + 1.0
    cfg = InferenceConfig(half_context_mm=0.0)
    whole = infer_volume(box_predictor, img, cfg, split_x=32, strategy="whole")
    halves = infer_volume(box_predictor, img, cfg, split_x=32, strategy="halves", spacing_mm=(1, 1, 1))
    assert np.abs(halves - whole)[..., 30:34].max() > 1e-2
    np.testing.assert_allclose(halves[..., :29], whole[..., :29], atol=1e-6)
    np.testing.assert_allclose(halves[..., 35:], whole[..., 35:], atol=1e-6)


def test_sliding_window_agrees_with_halves(box_predictor, blob_image):
    cfg = InferenceConfig(sw_roi_size=(16, 32, 32), sw_overlap=0.5, half_context_mm=8.0)
    halves = infer_volume(box_predictor, blob_image, cfg, split_x=32, strategy="halves",
                          spacing_mm=(1.0, 1.0, 1.0))
    sliding = infer_volume(box_predictor, blob_image, cfg, split_x=32, strategy="sliding")
    assert all(s[2:] == (16, 32, 32) for s in box_predictor.shapes[2:])
    assert len(box_predictor.shapes) > 6  # really windowed
    mask_h, mask_s = halves > 0.5, sliding > 0.5
    assert mask_h.sum() > 1000
    assert dice(mask_h, mask_s) > 0.99
    # windows see zero padding at their borders; Gaussian blending keeps that small
    assert np.abs(halves - sliding).mean() < 0.01


def test_tta_flip_averages_mirrored_predictions(make_blob_image):
    img = make_blob_image(shape=(16, 16, 32))
    ramp = torch.linspace(-2.0, 2.0, 32)

    def lopsided(x: torch.Tensor) -> torch.Tensor:  # depends on absolute x position
        return x + ramp.view(1, 1, 1, 1, -1)

    plain = infer_volume(lopsided, img, InferenceConfig(), split_x=16, strategy="whole")
    tta = infer_volume(lopsided, img, InferenceConfig(tta_flip=True), split_x=16, strategy="whole")
    t = torch.from_numpy(img)
    mirrored = torch.sigmoid(torch.flip(torch.flip(t, [2]) + ramp, [2])).numpy()
    np.testing.assert_allclose(tta, 0.5 * (plain + mirrored), atol=1e-6)
    assert np.abs(tta - plain).max() > 0.1


def test_tta_all_axes_makes_eight_passes(box_predictor, make_blob_image):
    img = make_blob_image(shape=(16, 16, 32))
    out = infer_volume(box_predictor, img, InferenceConfig(tta_flip=True), split_x=16,
                       strategy="whole", tta_axes=(0, 1, 2))
    assert len(box_predictor.shapes) == 8
    # the box filter is mirror-symmetric, so flipping changes nothing
    ref = infer_volume(box_predictor, img, InferenceConfig(), split_x=16, strategy="whole")
    np.testing.assert_allclose(out, ref, atol=1e-6)


def test_bf16_autocast_close_to_float32(blob_image):
    conv = torch.nn.Conv3d(1, 1, 3, padding=1)
    torch.manual_seed(0)
    torch.nn.init.normal_(conv.weight, 0.1, 0.05)
    cfg = InferenceConfig()
    fp32 = infer_volume(conv, blob_image, cfg, split_x=32, strategy="whole")
    bf16 = infer_volume(conv, blob_image, cfg, split_x=32, strategy="whole", bf16=True)
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).max() < 0.02


def test_odd_shape_is_padded_and_cropped_back(box_predictor, make_blob_image):
    img = make_blob_image(shape=(20, 30, 50))
    out = infer_volume(box_predictor, img, InferenceConfig(half_context_mm=16.0), split_x=25,
                       spacing_mm=(1, 1, 1))
    assert out.shape == img.shape
    assert all(all(d % 16 == 0 for d in s[2:]) for s in box_predictor.shapes)


def test_predictor_returning_named_output(blob_image):
    class Out:
        def __init__(self, logits):
            self.logits = logits

    fn = probability_predictor(lambda x: Out(x * 0.0))
    prob = fn(torch.from_numpy(blob_image)[None, None])
    assert torch.allclose(prob, torch.full_like(prob, 0.5))


def test_rejects_non_3d(box_predictor):
    with pytest.raises(ValueError, match="3-D"):
        infer_volume(box_predictor, np.zeros((4, 4)), InferenceConfig(), split_x=2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_windows_on_gpu_stitching_on_cpu(box_predictor, blob_image):  # pragma: no cover - GPU only
    cfg = InferenceConfig(sw_roi_size=(16, 32, 32))
    cpu = infer_volume(box_predictor, blob_image, cfg, split_x=32, strategy="sliding")
    gpu = infer_volume(box_predictor, blob_image, cfg, split_x=32, strategy="sliding",
                       device="cpu", sw_device="cuda")
    np.testing.assert_allclose(gpu, cpu, atol=1e-5)


def test_split_found_from_the_image_when_not_given(box_predictor, make_blob_image):
    from kidneyssl.preprocessing.split_plane import find_split_x

    img = make_blob_image(shape=(16, 32, 64), seed=3)
    cfg = InferenceConfig(half_context_mm=0.0)
    auto = infer_volume(box_predictor, img, cfg, split_x=None, spacing_mm=(1, 1, 1))
    split = find_split_x(None, img)
    explicit = infer_volume(box_predictor, img, cfg, split_x=split, spacing_mm=(1, 1, 1))
    np.testing.assert_array_equal(auto, explicit)


@pytest.fixture(scope="module")
def demo_model():
    from kidneyssl.config import load_preset
    from kidneyssl.models import build_segmentation_model

    torch.manual_seed(0)
    return build_segmentation_model(load_preset("demo").model, reconstruction=False).eval()


def test_real_model_one_window_equals_whole_volume(demo_model, make_blob_image):
    # GroupNorm makes a network's output depend on its field of view, so only equal fields of
    # view can agree exactly: one window covering the volume must reproduce the whole-volume pass
    img = make_blob_image(shape=(16, 32, 48))
    predictor = lambda x: demo_model(x).logits  # noqa: E731
    whole = infer_volume(predictor, img, InferenceConfig(), split_x=24, strategy="whole")
    one = infer_volume(predictor, img, InferenceConfig(sw_roi_size=(16, 32, 48)), split_x=24,
                       strategy="sliding")
    assert np.abs(one - whole).max() < 1e-5
    assert whole.std() > 1e-4  # not a constant map


def test_real_model_bf16_close_to_float32(demo_model, make_blob_image):
    img = make_blob_image(shape=(16, 32, 48))
    predictor = lambda x: demo_model(x).logits  # noqa: E731
    fp32 = infer_volume(predictor, img, InferenceConfig(), split_x=24, strategy="halves")
    bf16 = infer_volume(predictor, img, InferenceConfig(), split_x=24, strategy="halves", bf16=True)
    assert np.abs(bf16 - fp32).max() < 0.05


def test_bf16_and_fp32_masks_agree_on_a_trained_toy_model(trained_toy_model, make_blob_image):
    """A small DenseUNet3D trained for a few steps to segment the blobs: bf16 autocast and fp32
    inference of the whole volume give the same mask (Dice >= 0.99)."""
    model = trained_toy_model
    test = make_blob_image(shape=(16, 32, 48), seed=7)
    target = test > 0.5
    masks = {}
    for bf16 in (False, True):
        prob = infer_volume(lambda t: model(t).logits, test, InferenceConfig(), split_x=24,
                            strategy="whole", bf16=bf16)
        masks[bf16] = prob > 0.5
    assert dice(masks[False], target) > 0.9  # it learnt the blobs
    assert dice(masks[True], masks[False]) >= 0.99
