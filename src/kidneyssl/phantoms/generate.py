"""One phantom case: anatomy -> scan grid (KiTS19 geometry) -> HU image with noise + kidney label."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.phantoms.anatomy import PhantomAnatomy, sample_anatomy
from kidneyssl.phantoms.render import render_hu
from kidneyssl.phantoms.shapes import Grid, kidney_masks, tumour_field

__all__ = ["RESOLUTIONS", "generate_case", "scan_grid", "kits_affine"]

RESOLUTIONS: tuple[str, ...] = ("demo", "full")
_FULL_SLICE_MM = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def kits_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """KiTS19's voxel-to-world affine for ``spacing`` (z, y, x) mm: axis codes ('I', 'P', 'L'),
    origin 0, e.g. ``[[0, 0, -sx, 0], [0, -sy, 0, 0], [-sz, 0, 0, 0], [0, 0, 0, 1]]``."""
    sz, sy, sx = spacing
    return np.array([[0.0, 0.0, -sx, 0.0], [0.0, -sy, 0.0, 0.0], [-sz, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def _check_resolution(resolution: str) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")


def scan_grid(anat: PhantomAnatomy, resolution: str = "demo") -> Grid:
    """The scan's voxel grid in the anatomical frame (seeded by the anatomy's seed and resolution).

    demo: 40-60 slices of 4-6 mm, 160-200 x 160-200 in-plane voxels (about 1.8-2.9 mm);
    full: KiTS-like 512 x 512 in-plane (0.7-0.9 mm) and slices of 1-5 mm.
    The scan always contains both kidneys whole; where it starts above them is random.
    """
    _check_resolution(resolution)
    rng = np.random.default_rng(np.random.SeedSequence([anat.seed, 0x5CA9, RESOLUTIONS.index(resolution)]))
    top, bottom = anat.u_extent
    needed = bottom - top
    if resolution == "demo":
        n_plane = int(rng.integers(160, 201))
        sz = float(rng.uniform(4.0, 6.0))
        nz = max(int(rng.integers(40, 61)), math.ceil((needed + 10.0) / sz))
    else:
        n_plane = 512
        sz = float(rng.choice(_FULL_SLICE_MM))
        nz = math.ceil(float(rng.uniform(needed + 10.0, needed + 110.0)) / sz)
    sp = anat.fov_mm / n_plane
    spare = nz * sz - needed
    u0 = top - float(rng.uniform(0.1, 0.9)) * spare
    dv, dw = anat.body_shift_mm
    v0 = -dv - anat.fov_mm / 2.0 + sp / 2.0
    w0 = -dw - anat.fov_mm / 2.0 + sp / 2.0
    return Grid(shape=(nz, n_plane, n_plane), spacing=(sz, sp, sp), origin=(u0, v0, w0))


def _render_grid(grid: Grid) -> Grid:
    """A coarser grid (in-plane voxels >= ~1.6 mm, slices >= ~2 mm) covering the same extent."""
    factors = [max(1, int(2.0 // grid.spacing[0])), max(1, int(1.6 // grid.spacing[1])),
               max(1, int(1.6 // grid.spacing[2]))]
    if factors == [1, 1, 1]:
        return grid
    shape = tuple(math.ceil(n / f) for n, f in zip(grid.shape, factors))
    spacing = tuple(s * f for s, f in zip(grid.spacing, factors))
    origin = tuple(o + (f - 1) * s / 2.0 for o, f, s in zip(grid.origin, factors, grid.spacing))
    return Grid(shape=shape, spacing=spacing, origin=origin)  # type: ignore[arg-type]


def label_on_grid(anat: PhantomAnatomy, grid: Grid) -> np.ndarray:
    """uint8 label (0 background, 1 kidney, 2 tumour) of ``anat`` evaluated on ``grid``."""
    label = np.zeros(grid.shape, dtype=np.uint8)
    for kidney in anat.kidneys.values():
        km = kidney_masks(grid, kidney)
        if km is not None:
            label[km.box.slices][km.label] = 1
        for tumour in kidney.tumours:
            r = float(np.max(tumour.radii)) * 1.2
            box = grid.box(tumour.center - r, tumour.center + r)
            if box is not None:
                label[box.slices][tumour_field(box, tumour) < 1.0] = 2
    return label


def generate_case(seed: int, resolution: str = "demo") -> tuple[Volume, Volume]:
    """Synthesise one contrast-enhanced abdominal CT with its kidney/tumour label.

    Args:
        seed: any int; the same seed gives identical arrays and affines.
        resolution: ``"demo"`` (~50 x 180 x 180, 4-6 mm slices) or ``"full"`` (KiTS-like 512 x 512).

    Returns:
        ``(image, label)``: image int16 HU, label uint8 in {0, 1, 2}, both (Z, Y, X) with KiTS19's
        geometry (axis codes ``('I', 'P', 'L')``, origin 0), patient left at larger x index.
    """
    _check_resolution(resolution)
    anat = sample_anatomy(seed)
    grid = scan_grid(anat, resolution)
    coarse = _render_grid(grid)
    hu, _ = render_hu(anat, coarse)
    # Scanner point-spread / partial volume: a little blur on the rendering grid.
    hu = ndimage.gaussian_filter(hu, sigma=0.5)
    if coarse is not grid:
        scale = np.asarray(grid.spacing) / np.asarray(coarse.spacing)
        offset = (np.asarray(grid.origin) - np.asarray(coarse.origin)) / np.asarray(coarse.spacing)
        hu = ndimage.affine_transform(hu, scale, offset=offset, output_shape=grid.shape, order=1, mode="nearest")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x401, RESOLUTIONS.index(resolution)]))
    noise = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=(0.0, 0.6, 0.6))  # CT noise is correlated in-plane
    noise *= anat.hu["noise_sd"] / (float(noise.std()) + 1e-6)
    hu += noise
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    label = label_on_grid(anat, grid)
    geometry = Geometry(affine=kits_affine(grid.spacing), shape=grid.shape)
    return Volume(image, geometry), Volume(label, geometry)
