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


# --- scans on disk and checkpoints ------------------------------------------------------------

CANONICAL = ("I", "P", "L")


def canonical_affine(spacing) -> np.ndarray:
    """RAS+ affine of a canonical (I, P, L) array with ``spacing`` (z, y, x) mm."""
    sz, sy, sx = spacing
    aff = np.eye(4)
    aff[:3, :3] = [[0.0, 0.0, -sx], [0.0, -sy, 0.0], [-sz, 0.0, 0.0]]
    aff[:3, 3] = [40.0, 60.0, 100.0]
    return aff


def reorient(array: np.ndarray, affine: np.ndarray, axcodes) -> tuple[np.ndarray, np.ndarray]:
    """The same physical image stored with other axis codes (exact: permute and flip)."""
    from nibabel import orientations as nio

    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(axcodes)))
    out = np.ascontiguousarray(nio.apply_orientation(array, ornt))
    new_aff = affine @ nio.inv_ornt_aff(ornt, array.shape)
    assert nio.aff2axcodes(new_aff) == tuple(axcodes)
    return out, new_aff


def kidney_scan(shape=(40, 64, 80), spacing=(2.5, 1.5, 2.0), speck: bool = False, seed: int = 0):
    """Canonical (Z, Y, X) int16 CT-like scan with two bright 'kidneys', and their mask.

    Right kidney at low x, left at high x (canonical x runs towards patient left).
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij")
    img = rng.normal(-40.0, 15.0, size=shape)
    mask = np.zeros(shape, np.uint8)
    extent = [s * sp for s, sp in zip(shape, spacing)]
    for cx in (0.25 * extent[2], 0.75 * extent[2]):
        r = ((z - extent[0] / 2) / 22.0) ** 2 + ((y - extent[1] * 0.55) / 16.0) ** 2 + ((x - cx) / 14.0) ** 2
        mask[r < 1.0] = 1
    img[mask > 0] = rng.normal(250.0, 15.0, size=int(mask.sum()))
    if speck:  # a bright 9 mm cube on the patient-right side, apart from the kidney
        zc, yc = int(0.15 * shape[0]), int(0.2 * shape[1])
        xc = int(0.35 * shape[2])
        sl = tuple(slice(c, c + int(round(9.0 / sp))) for c, sp in zip((zc, yc, xc), spacing))
        img[sl] = 250.0
    return img.astype(np.int16), mask, canonical_affine(spacing)


@pytest.fixture
def make_kidney_scan():
    return kidney_scan


@pytest.fixture
def reorient_fn():
    return reorient


class BoxModel(torch.nn.Module):
    """A 'segmentation model' whose logits are a box filter of the input: meaningful masks
    (bright blobs) without training. Returns SegmentationOutput like DenseUNet3D."""

    def __init__(self, radius: int = 1, gain: float = 8.0, level: float = 3.0):
        super().__init__()
        self.inner = BoxFilterPredictor(radius, gain, level)

    def forward(self, x):
        from kidneyssl.models import SegmentationOutput

        return SegmentationOutput(self.inner(x))


@pytest.fixture
def box_model() -> BoxModel:
    return BoxModel()


def small_config():
    """Demo model trained on whole halves (as the paper's), coarse preprocessing (small arrays),
    halves by default."""
    import dataclasses

    from kidneyssl.config import PreprocessConfig, load_preset

    cfg = load_preset("demo")
    return dataclasses.replace(cfg, preprocess=PreprocessConfig(spacing_mm=(4.0, 3.0, 3.0)),
                               train=dataclasses.replace(cfg.train, crop_size=None),
                               inference=dataclasses.replace(cfg.inference, half_context_mm=12.0))


@pytest.fixture(scope="session")
def demo_checkpoint(tmp_path_factory):
    """A segmentation checkpoint of the demo architecture with random (seeded) weights."""
    from kidneyssl.config import config_to_dict
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.models import build_segmentation_model

    cfg = small_config()
    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model)  # with the reconstruction branch, as trained
    path = tmp_path_factory.mktemp("ckpt") / "seg.pt"
    save_checkpoint(path, kind="segmentation", config=config_to_dict(cfg), model_state=model.state_dict(),
                    epoch=0)
    return path


@pytest.fixture
def small_cfg():
    return small_config()


def train_toy_model(steps: int = 20):
    """A small DenseUNet3D trained ``steps`` Adam steps to segment the blobs of
    :func:`two_blob_image` (16 x 32 x 48): a trained network in a second."""
    from kidneyssl.config import ModelConfig
    from kidneyssl.models import DenseUNet3D

    torch.manual_seed(0)
    cfg = ModelConfig(init_features=8, growth_rate=8, block_layers=(1, 1, 1, 1), norm_groups=4,
                      reconstruction=False)
    model = DenseUNet3D(cfg)
    images = [two_blob_image(shape=(16, 32, 48), seed=s) for s in range(2)]
    x = torch.from_numpy(np.stack(images))[:, None]
    y = (x > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).logits, y)
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_toy_model():
    return train_toy_model()
