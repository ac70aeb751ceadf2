"""Voxel grids in the anatomical frame and vectorised implicit shapes (ellipsoids, capsules, kidneys).

Every shape is evaluated only inside its bounding box, on broadcast coordinate vectors
(``u`` (n,1,1), ``v`` (1,n,1), ``w`` (1,1,n), mm), so a structure costs work proportional to its
size, not to the volume's. Kidneys and tumours are analytic (no random fields), so their masks
are identical on any grid: the label can be computed on a finer grid than the image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kidneyssl.phantoms.anatomy import KidneyAnatomy, Tumour

__all__ = ["Grid", "Box", "capsule_mask", "ellipsoid_field", "KidneyMasks", "kidney_masks", "tumour_field"]


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid in the anatomical frame: voxel (i, j, k) sits at
    ``origin + (i, j, k) * spacing`` (u, v, w) mm. Shape and spacing are in array order (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def coords(self, axis: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        hi = self.shape[axis] if hi is None else hi
        return (self.origin[axis] + np.arange(lo, hi) * self.spacing[axis]).astype(np.float32)

    def box(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> "Box | None":
        """The sub-grid covering [lo_mm, hi_mm] (u, v, w), or None when it misses the grid."""
        slices, vecs = [], []
        for a in range(3):
            i0 = max(0, int(np.floor((lo_mm[a] - self.origin[a]) / self.spacing[a])))
            i1 = min(self.shape[a], int(np.ceil((hi_mm[a] - self.origin[a]) / self.spacing[a])) + 1)
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
            shape = [1, 1, 1]
            shape[a] = i1 - i0
            vecs.append(self.coords(a, i0, i1).reshape(shape))
        return Box(tuple(slices), vecs[0], vecs[1], vecs[2])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Box:
    """A bounding box on a grid: array slices and broadcast coordinate vectors u, v, w (mm)."""

    slices: tuple[slice, slice, slice]
    u: np.ndarray
    v: np.ndarray
    w: np.ndarray


def ellipsoid_field(box: Box, center: np.ndarray, radii: np.ndarray, axes: np.ndarray | None = None) -> np.ndarray:
    """Sum of squared normalised local coordinates (< 1 inside) of an ellipsoid; ``axes`` rows are its
    unit axes in (u, v, w) (identity when None). Shape: the box's."""
    du, dv, dw = box.u - center[0], box.v - center[1], box.w - center[2]
    if axes is None:
        return (du / radii[0]) ** 2 + (dv / radii[1]) ** 2 + (dw / radii[2]) ** 2
    total = 0.0
    for row, radius in zip(axes, radii):
        total = total + ((row[0] * du + row[1] * dv + row[2] * dw) / radius) ** 2
    return total  # type: ignore[return-value]


def capsule_mask(box: Box, p0: np.ndarray, p1: np.ndarray, radius: float) -> np.ndarray:
    """Voxels within ``radius`` mm of the segment p0-p1 (a tube with round ends)."""
    seg = np.asarray(p1, float) - np.asarray(p0, float)
    length2 = max(float(seg @ seg), 1e-6)
    du, dv, dw = box.u - p0[0], box.v - p0[1], box.w - p0[2]
    t = np.clip((du * seg[0] + dv * seg[1] + dw * seg[2]) / length2, 0.0, 1.0)
    dist2 = (du - t * seg[0]) ** 2 + (dv - t * seg[1]) ** 2 + (dw - t * seg[2]) ** 2
    return dist2 < radius * radius


def capsule_box(grid: Grid, p0: np.ndarray, p1: np.ndarray, radius: float) -> Box | None:
    lo = np.minimum(p0, p1) - radius
    hi = np.maximum(p0, p1) + radius
    return grid.box(lo, hi)


def tumour_field(box: Box, tumour: Tumour) -> np.ndarray:
    """Normalised radius field of a tumour (< 1 inside), gently lobulated by analytic ripples."""
    du, dv, dw = box.u - tumour.center[0], box.v - tumour.center[1], box.w - tumour.center[2]
    f = (du / tumour.radii[0]) ** 2 + (dv / tumour.radii[1]) ** 2 + (dw / tumour.radii[2]) ** 2
    r = float(np.mean(tumour.radii))
    phase = tumour.center * 0.37
    ripple = 0.06 * np.sin(2.5 * du / r + phase[0]) * np.sin(2.5 * dv / r + phase[1]) \
        + 0.05 * np.sin(3.0 * dw / r + phase[2])
    return f * (1.0 + ripple)


@dataclass
class KidneyMasks:
    """Masks of one kidney on a box: ``envelope`` (kidney outline incl. sinus), ``parenchyma``,
    ``sinus`` (fat + vessels inside), ``pelvis`` (collecting system, label kidney), ``medulla``
    (pyramids), ``perirenal`` (fat rim around the kidney), ``rho`` (normalised radius)."""

    box: Box
    envelope: np.ndarray
    parenchyma: np.ndarray
    sinus: np.ndarray
    pelvis: np.ndarray
    medulla: np.ndarray
    perirenal: np.ndarray

    @property
    def label(self) -> np.ndarray:
        """What KiTS19 labels kidney: parenchyma and the non-fat hilum structures (pelvis)."""
        return self.parenchyma | self.pelvis


def kidney_box(grid: Grid, kidney: KidneyAnatomy, margin_mm: float = 14.0) -> Box | None:
    reach = np.abs(kidney.axes.T) @ kidney.half_axes * 1.15 + margin_mm
    return grid.box(kidney.center - reach, kidney.center + reach)


def kidney_masks(grid: Grid, kidney: KidneyAnatomy) -> KidneyMasks | None:
    """Evaluate one kidney on ``grid`` (None when it lies outside the grid)."""
    box = kidney_box(grid, kidney)
    if box is None:
        return None
    du, dv, dw = box.u - kidney.center[0], box.v - kidney.center[1], box.w - kidney.center[2]
    a = kidney.axes
    s = a[0, 0] * du + a[0, 1] * dv + a[0, 2] * dw
    t = a[1, 0] * du + a[1, 1] * dv + a[1, 2] * dw
    r = a[2, 0] * du + a[2, 1] * dv + a[2, 2] * dw
    ls, lt, lr = (float(x) for x in kidney.half_axes)
    sn = s / ls
    # Bean shape: the poles curve towards the hilum (+t), leaving the medial border concave.
    t_center = kidney.bend * lt * (sn * sn - 1.0 / 3.0)
    tn = (t - t_center) / lt
    rn = r / lr
    f = sn * sn + tn * tn + rn * rn
    if kidney.hump > 0:  # lateral bulge of the mid/upper left kidney ("dromedary hump")
        hump = ((sn - 0.25) / 0.35) ** 2 + ((tn + 0.85) / (kidney.hump * 1.6)) ** 2 + (rn / 0.6) ** 2
        f = np.minimum(f, hump)
    envelope = f < 1.0
    # Hilum: a notch in the medial border opening into the renal sinus.
    notch = (sn / 0.38) ** 2 + ((t / lt - 0.95) / 0.5) ** 2 + (rn / 0.45) ** 2 < 1.0
    sinus_f = (sn / 0.62) ** 2 + ((t / lt - 0.3) / 0.45) ** 2 + (rn / 0.42) ** 2
    sinus = sinus_f < 1.0
    parenchyma = envelope & ~notch & ~sinus
    pelvis = ((sn / 0.3) ** 2 + ((t / lt - 0.55) / 0.35) ** 2 + (rn / 0.28) ** 2 < 1.0) & envelope
    # Medulla: pyramids between cortex and sinus, separated by cortical columns.
    rho = np.sqrt(f)
    cortex_frac = kidney.cortex_mm / min(lt, lr)
    theta = np.arctan2(sn, tn - 0.3)
    phi = np.arctan2(rn, np.abs(tn - 0.3) + 1e-3)
    columns = np.cos(7.0 * theta) * np.cos(3.0 * phi)
    medulla = parenchyma & (rho < 1.0 - cortex_frac) & (sinus_f > 1.5) & (columns > -0.25)
    perirenal = (f < 1.45) & ~envelope
    return KidneyMasks(box=box, envelope=envelope, parenchyma=parenchyma, sinus=sinus & envelope | notch & envelope,
                       pelvis=pelvis, medulla=medulla, perirenal=perirenal)
