"""Fixtures for inference tests: deterministic predictors whose output means something."""

from __future__ import annotations

import numpy as np
import pytest
import torch


class BoxFilterPredictor:
    """Logits = gain * (local mean of the input over a (2r+1)^3 box - level).

    A smooth, local function of the input with a known receptive field (radius ``r``), so
    halves with >= r voxels of context reproduce whole-volume output exactly, and thresholded
    outputs are meaningful (a blob brighter than ``level`` is segmented). Records input shapes.
    """

    def __init__(self, radius: int = 2, gain: float = 8.0, level: float = 0.5):
        self.radius = radius
        self.gain = gain
        self.level = level
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        k = 2 * self.radius + 1
        weight = torch.full((1, 1, k, k, k), 1.0 / k**3, dtype=x.dtype, device=x.device)
        return self.gain * (torch.nn.functional.conv3d(x, weight, padding=self.radius) - self.level)


@pytest.fixture
def box_predictor() -> BoxFilterPredictor:
    return BoxFilterPredictor()


def two_blob_image(shape=(32, 48, 64), seed: int = 0) -> np.ndarray:
    """(Z, Y, X) float32: noise plus two bright ellipsoids, one per lateral half."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij")
    img = rng.normal(0.0, 0.15, size=shape).astype(np.float32)
    for cx in (shape[2] * 0.25, shape[2] * 0.72):
        r = ((z - shape[0] / 2) / (shape[0] / 4)) ** 2 + ((y - shape[1] / 2) / (shape[1] / 5)) ** 2 \
            + ((x - cx) / (shape[2] / 9)) ** 2
        img[r < 1.0] += 1.0
    return img


@pytest.fixture
def blob_image() -> np.ndarray:
    return two_blob_image()


@pytest.fixture
def make_blob_image():
    return two_blob_image
