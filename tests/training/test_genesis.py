"""Models Genesis (``--method genesis``): each transform is deterministic under a seed and changes a
hand-made volume as the papers describe; intensities go to the window's [0, 1] and back; the loss
falls on a tiny volume."""

from __future__ import annotations

import numpy as np
import pytest

from kidneyssl.config import apply_overrides
from kidneyssl.data.subvolumes import CropIntensity
from kidneyssl.preprocessing.intensity import window_unit_to_zscore, zscore_to_window_unit
from kidneyssl.training.tasks.genesis import (
    GenesisConfig,
    GenesisCorruption,
    bezier_intensity,
    fill_boxes,
    in_painting,
    inpaint_boxes,
    keep_boxes,
    local_pixel_shuffle,
    nonlinear_transform,
    out_painting,
    outpaint_boxes,
    random_flips,
    shuffle_blocks,
)

from .conftest import RESTORATION_OVERRIDES, restoration_losses

SHAPE = (16, 32, 32)


def _ramp() -> np.ndarray:
    """A hand-made volume in [0, 1) with distinct values."""
    return (np.arange(np.prod(SHAPE), dtype=np.float32) / np.prod(SHAPE)).reshape(SHAPE)


def _inside(boxes, shape=SHAPE) -> np.ndarray:
    inside = np.zeros(shape, dtype=bool)
    for start, size in boxes:
        inside[tuple(slice(s, s + k) for s, k in zip(start, size))] = True
    return inside


@pytest.mark.parametrize("transform", [nonlinear_transform, local_pixel_shuffle, in_painting, out_painting])
def test_each_transform_is_a_function_of_the_seed(transform) -> None:
    x = _ramp()
    a = transform(x, np.random.default_rng(5))
    b = transform(x, np.random.default_rng(5))
    c = transform(x, np.random.default_rng(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.array_equal(x, _ramp())  # the input is never modified


@pytest.mark.parametrize("controls", [[[0.2, 0.1], [0.7, 0.9]], [[0.1, 0.6], [0.4, 0.95]], [[0.6, 0.2], [0.9, 0.3]]])
def test_the_bezier_map_is_monotone_with_fixed_end_points(controls) -> None:
    x = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    up = bezier_intensity(x, np.array(controls), invert=False)
    down = bezier_intensity(x, np.array(controls), invert=True)
    assert np.all(np.diff(up) >= -1e-6) and np.all(np.diff(down) <= 1e-6)
    assert up[0] == pytest.approx(0.0, abs=1e-4) and up[-1] == pytest.approx(1.0, abs=1e-4)
    assert down[0] == pytest.approx(1.0, abs=1e-4) and down[-1] == pytest.approx(0.0, abs=1e-4)
    assert not np.allclose(up, x, atol=1e-2)  # a curve, not the identity


def test_control_points_on_the_diagonal_give_the_identity() -> None:
    x = np.linspace(0.0, 1.0, 201, dtype=np.float32)
    assert np.allclose(bezier_intensity(x, np.array([[0.3, 0.3], [0.6, 0.6]]), invert=False), x, atol=1e-4)
    thirds = np.array([[1 / 3, 1 / 3], [2 / 3, 2 / 3]])  # evenly spaced: the curve runs at constant speed
    assert np.allclose(bezier_intensity(x, thirds, invert=True), 1 - x, atol=1e-4)


def test_local_shuffling_permutes_values_within_each_block() -> None:
    x = _ramp()
    blocks = [((0, 0, 0), (2, 3, 3)), ((4, 10, 7), (1, 3, 2)), ((9, 20, 20), (3, 3, 3))]  # disjoint
    out = shuffle_blocks(x, blocks, np.random.default_rng(0))
    inside = _inside(blocks)
    assert np.array_equal(out[~inside], x[~inside])
    for start, size in blocks:
        box = tuple(slice(s, s + k) for s, k in zip(start, size))
        assert np.array_equal(np.sort(out[box].ravel()), np.sort(x[box].ravel()))  # the same multiset
    assert not np.array_equal(out, x)


def test_local_shuffling_moves_values_only_a_little() -> None:
    """Blocks are at most a tenth of each axis: a voxel's new value comes from its neighbourhood."""
    x = _ramp()
    out = local_pixel_shuffle(x, np.random.default_rng(1), n_blocks=500)
    assert not np.array_equal(out, x)
    index = np.rint(out * np.prod(SHAPE)).astype(int)  # the ramp encodes each value's origin
    origin = np.stack(np.unravel_index(index, SHAPE), axis=-1)
    here = np.stack(np.indices(SHAPE), axis=-1)
    reach = np.array([max(1, n // 10) - 1 for n in SHAPE])
    assert np.all(np.abs(origin - here) <= reach)


def test_in_painting_replaces_inner_boxes_by_noise_and_keeps_the_rest() -> None:
    x = np.full(SHAPE, 5.0, dtype=np.float32)  # outside the noise's [0, 1)
    boxes = inpaint_boxes(SHAPE, np.random.default_rng(3))
    assert 1 <= len(boxes) <= 5
    for start, size in boxes:
        for s, k, n in zip(start, size, SHAPE):
            assert n // 6 <= k <= n // 3 and 0 < s and s + k < n  # inner, 1/6 to 1/3 of each axis
    out = fill_boxes(x, boxes, np.random.default_rng(4))
    inside = _inside(boxes)
    assert np.all(out[~inside] == 5.0)
    assert np.all((out[inside] >= 0.0) & (out[inside] < 1.0)) and out[inside].std() > 0.1


def test_out_painting_keeps_inner_boxes_and_replaces_the_rest_by_noise() -> None:
    x = np.full(SHAPE, 5.0, dtype=np.float32)
    boxes = outpaint_boxes(SHAPE, np.random.default_rng(3))
    assert 1 <= len(boxes) <= 5
    for start, size in boxes:
        for s, k, n in zip(start, size, SHAPE):
            assert n - 4 * n // 7 <= k <= n - 3 * n // 7 and 0 < s and s + k < n
    out = keep_boxes(x, boxes, np.random.default_rng(4))
    inside = _inside(boxes)
    assert np.all(out[inside] == 5.0)
    assert np.all((out[~inside] >= 0.0) & (out[~inside] < 1.0)) and (~inside).any()


def test_flips_move_input_and_target_alike() -> None:
    x = _ramp()
    flipped = random_flips([x, x + 1], rate=1.0, rng=np.random.default_rng(0))
    assert not np.array_equal(flipped[0], x) and np.array_equal(flipped[1], flipped[0] + 1)
    assert np.array_equal(random_flips([x], rate=0.0, rng=np.random.default_rng(0))[0], x)


def test_intensities_map_to_the_window_and_back() -> None:
    hu = np.array([-80.0, 110.0, 300.0], dtype=np.float32)
    mean, std = 20.0, 120.0
    z = (hu - mean) / std
    unit = zscore_to_window_unit(z, mean, std, (-80.0, 300.0))
    assert np.allclose(unit, [0.0, 0.5, 1.0], atol=1e-6)
    assert np.allclose(window_unit_to_zscore(unit, mean, std, (-80.0, 300.0)), z, atol=1e-6)


def test_the_corruption_restores_the_original_target() -> None:
    intensity = CropIntensity(20.0, 120.0, (-80.0, 300.0))
    crop = intensity.from_unit(np.random.default_rng(0).random(SHAPE, dtype=np.float32))
    nothing = GenesisCorruption(0.0, 0.0, 0.0, 0.0, 0.2, 10)
    image, target, weight = nothing(crop, np.random.default_rng(1), intensity)
    assert np.allclose(image, crop, atol=1e-5) and np.array_equal(target, crop) and np.all(weight == 1.0)
    everything = GenesisCorruption(0.0, 1.0, 1.0, 1.0, 0.2, 50)
    image, target, _ = everything(crop, np.random.default_rng(1), intensity)
    assert np.array_equal(target, crop) and not np.allclose(image, crop, atol=1e-3)
    unit = intensity.to_unit(image)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5  # every transform stays in the window


def test_the_official_probabilities_are_the_defaults() -> None:
    s = GenesisConfig()
    assert (s.flip_rate, s.local_rate, s.nonlinear_rate, s.paint_rate, s.inpaint_rate, s.local_blocks) == (
        0.4, 0.5, 0.9, 0.9, 0.2, 10_000)


def test_the_genesis_loss_falls_on_a_tiny_volume(tiny_cfg, tiny_cache) -> None:
    cfg = apply_overrides(tiny_cfg, RESTORATION_OVERRIDES)
    losses = restoration_losses("genesis", cfg, tiny_cache)
    assert losses[-1] < 0.8 * losses[0], losses


def test_the_paper_preset_holds_the_defaults() -> None:
    from kidneyssl.config import load_preset
    from kidneyssl.training.tasks.genesis import GenesisTask

    assert GenesisTask().method_settings(load_preset("paper")) == GenesisConfig()
    GenesisTask().check_settings(GenesisTask().method_settings(load_preset("demo")), 16)
