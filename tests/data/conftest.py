"""Shared fixture for the data tests: a tiny prepared cache made by kidneyssl's own prepare."""

from __future__ import annotations

from typing import Callable

import numpy as np
import pytest

from kidneyssl.config import PreprocessConfig
from kidneyssl.data.cache import open_cache
from kidneyssl.data.prepare import prepare_dataset
from kidneyssl.io.geometry import Geometry, Side
from kidneyssl.io.volumes import write_mask, write_volume
from kidneyssl.phantoms import kits_affine


def _build_cache(root, n_cases: int, single: dict[int, Side] | None = None, unlabelled=()):
    """Write box-kidney cases in KiTS19 layout, ``prepare`` them (spacing unchanged, tumour kept as
    label 2) and open the cache with :func:`kidneyssl.data.cache.open_cache`.

    ``single`` maps a case index to its only kidney's side; cases in ``unlabelled`` get no
    segmentation file."""
    single = single or {}
    data = root / "data"
    spacing = (2.0, 1.5, 1.5)
    geometry = Geometry(kits_affine(spacing), (16, 32, 64))
    for i in range(n_cases):
        rng = np.random.default_rng(i)
        image = (40.0 + 30.0 * rng.normal(size=geometry.shape)).astype(np.float32)
        label = np.zeros(geometry.shape, np.uint8)
        if single.get(i, Side.RIGHT) is Side.RIGHT:  # patient right = smaller x in (I, P, L)
            label[4:12, 8:20, 8 + i % 3:20] = 1
            label[6:8, 10:12, 12:14] = 2  # a tumour inside the kidney
        if single.get(i, Side.LEFT) is Side.LEFT:
            label[3:10, 10:22, 40:50 + i % 4] = 1
        folder = data / f"case_{i:05d}"
        write_volume(image, geometry, folder / "imaging.nii.gz")
        if i not in set(unlabelled):
            write_mask(label, folder / "segmentation.nii.gz", like=geometry)
    cfg = PreprocessConfig(spacing_mm=spacing, keep_tumor=True)
    summary = prepare_dataset(data, root / "cache", cfg, workers=1)
    assert not summary.failed, summary.failed
    return open_cache(root / "cache", expected=cfg)


@pytest.fixture
def make_cache() -> Callable:
    """``make_cache(root, n_cases, single=None, unlabelled=())``: a tiny prepared cache of box
    kidneys in noise."""
    return _build_cache
