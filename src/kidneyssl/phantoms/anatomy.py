"""Random anatomy of one phantom case: every size, position, angle and intensity, drawn from a seed.

All positions are in an anatomical frame in mm, axes ``(u, v, w)`` in canonical array order:
``u`` runs towards the patient's inferior, ``v`` towards posterior, ``w`` towards the patient's
LEFT (the same directions as the axes of a KiTS19 array, ``('I', 'P', 'L')``). The origin is the
body's centre in the axial plane (``v = w = 0``, the midline is ``w = 0``) and, along ``u``, the
level half-way between the two kidney centres.

The sampled numbers follow published and measured anatomy (the left/right differences the
paper's proxy task relies on, Frimann-Dahl 1961, and the real KiTS19 masks in ``../shared``):
the right kidney sits 1-2 cm lower (caudal) and is usually slightly smaller; the left is higher
and longer; both long axes tilt so that the upper poles are medial and posterior (in the real
masks the principal axis leans ~10-15 deg medially and ~20-30 deg posteriorly); the hilum faces
medially and somewhat anteriorly. Nothing here is tuned to make pretraining look better.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kidneyssl.io.geometry import Side

__all__ = ["KidneyAnatomy", "Tumour", "PhantomAnatomy", "sample_anatomy", "SINGLE_KIDNEY_RATE", "TUMOUR_RATE"]

#: Fraction of cases with one kidney only (nephrectomy, agenesis).
SINGLE_KIDNEY_RATE: float = 0.05
#: Fraction of cases with at least one tumour.
TUMOUR_RATE: float = 0.4

_SUPERIOR = np.array([-1.0, 0.0, 0.0])
_POSTERIOR = np.array([0.0, 1.0, 0.0])
_LEFT = np.array([0.0, 0.0, 1.0])


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class Tumour:
    """A roughly round renal tumour (label 2). ``center`` (u, v, w) mm, ``radii`` mm, ``hu`` mean HU."""

    center: np.ndarray
    radii: np.ndarray
    hu: float
    necrotic: bool


@dataclass(frozen=True)
class KidneyAnatomy:
    """One kidney: a bent ellipsoid with a medial hilum notch.

    Attributes:
        side: patient side.
        center: (u, v, w) mm.
        axes: 3x3 rows = unit vectors of the local frame in (u, v, w): row 0 ``s`` towards the
            upper pole, row 1 ``t`` towards the hilum (medial, a little anterior), row 2 ``r``.
        half_axes: (s, t, r) semi-axes in mm (half length, half width, half thickness).
        bend: medial bend of the long axis (bean shape), as a fraction of the half width.
        cortex_mm: cortical thickness.
        cortex_hu, medulla_hu: enhancement of cortex and medulla.
        hump: size of a lateral "dromedary" hump (0 = none), a left-kidney variant.
        tumours: tumours in this kidney.
    """

    side: Side
    center: np.ndarray
    axes: np.ndarray
    half_axes: np.ndarray
    bend: float
    cortex_mm: float
    cortex_hu: float
    medulla_hu: float
    hump: float
    tumours: tuple[Tumour, ...] = ()

    @property
    def length_mm(self) -> float:
        """Pole-to-pole length in mm."""
        return float(2.0 * self.half_axes[0])

    def hilum_point(self) -> np.ndarray:
        """(u, v, w) mm of the hilum opening, where vessels and the pelvis leave the kidney."""
        return self.center + self.axes[1] * self.half_axes[1] * 1.05


@dataclass(frozen=True)
class PhantomAnatomy:
    """Everything that defines one phantom, independent of the voxel grid.

    ``kidneys`` maps each present side to its kidney (one side is missing in single-kidney cases).
    Body: an elliptical cross-section with half width ``body_half_axes[1]`` (lateral, w) and half
    depth ``body_half_axes[0]`` (AP, v); ``fat_mm`` subcutaneous fat, ``wall_mm`` muscle wall.
    ``fov_mm`` is the in-plane field of view of the scan (square), ``u_range`` the anatomical
    extent along u that a scan may cover.
    """

    seed: int
    kidneys: dict[Side, KidneyAnatomy]
    body_half_axes: tuple[float, float]
    fat_mm: float
    wall_mm: float
    fov_mm: float
    body_shift_mm: tuple[float, float]
    spine_v: float
    hu: dict[str, float] = field(default_factory=dict)
    params: dict[str, float] = field(default_factory=dict)

    @property
    def missing_side(self) -> Side | None:
        """The side without a kidney, or None."""
        for side in Side:
            if side not in self.kidneys:
                return side
        return None

    @property
    def u_extent(self) -> tuple[float, float]:
        """(top, bottom) u in mm that the scan must include: both kidneys whole, with margins."""
        lo, hi = [], []
        for k in self.kidneys.values():
            reach = np.abs(k.axes.T @ k.half_axes)[0] + 8.0
            lo.append(k.center[0] - reach)
            hi.append(k.center[0] + reach)
            for t in k.tumours:
                lo.append(t.center[0] - t.radii.max() - 5)
                hi.append(t.center[0] + t.radii.max() + 5)
        return float(min(lo)), float(max(hi))


def _kidney(rng: np.random.Generator, side: Side, level_u: float, lateral: float, spine_v: float,
            length: float, width_scale: float, phase: tuple[float, float], tumour_count: int) -> KidneyAnatomy:
    sign = 1.0 if side is Side.LEFT else -1.0  # +w is the patient's left
    medial = -sign * _LEFT
    coronal = np.deg2rad(rng.normal(13.0, 4.0))   # upper pole towards the midline
    sagittal = np.deg2rad(rng.normal(22.0, 7.0))  # upper pole towards the back
    s_axis = _unit(_SUPERIOR + np.tan(coronal) * medial + np.tan(sagittal) * _POSTERIOR)
    hilum = np.deg2rad(rng.normal(30.0, 10.0))    # hilum turned anteriorly from straight medial
    m0 = np.cos(hilum) * medial - np.sin(hilum) * _POSTERIOR
    t_axis = _unit(m0 - (m0 @ s_axis) * s_axis)
    r_axis = np.cross(s_axis, t_axis)
    half = np.array([length / 2.0, rng.normal(32.0, 2.5) * width_scale, rng.normal(25.0, 2.0) * width_scale])
    center = np.array([level_u, spine_v + rng.normal(3.0, 6.0), sign * lateral])
    cortex_hu, medulla_hu = phase
    hump = float(rng.uniform(0.15, 0.3)) if side is Side.LEFT and rng.random() < 0.25 else 0.0
    axes = np.stack([s_axis, t_axis, r_axis])
    tumours = []
    for _ in range(tumour_count):
        direction = _unit(rng.normal(size=3))
        surface = 1.0 / np.sqrt(np.sum((direction / half) ** 2))  # distance to the ellipsoid surface
        depth = rng.uniform(0.45, 1.05)                            # > ~0.8: exophytic
        radius = float(np.exp(rng.uniform(np.log(8.0), np.log(min(38.0, 0.75 * half[0])))))
        local = direction * surface * depth
        tumours.append(Tumour(
            center=center + axes.T @ local,
            radii=radius * rng.uniform(0.85, 1.15, size=3),
            hu=float(rng.uniform(30.0, 80.0)),
            necrotic=bool(radius > 18.0 and rng.random() < 0.5),
        ))
    return KidneyAnatomy(side=side, center=center, axes=axes, half_axes=half,
                         bend=float(rng.uniform(0.2, 0.35)), cortex_mm=float(rng.uniform(5.0, 8.0)),
                         cortex_hu=cortex_hu + rng.normal(0.0, 6.0), medulla_hu=medulla_hu + rng.normal(0.0, 6.0),
                         hump=hump, tumours=tuple(tumours))


def sample_anatomy(seed: int) -> PhantomAnatomy:
    """Draw the anatomy of one phantom from ``seed`` (deterministic; independent of resolution)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA7A]))
    fov = float(rng.uniform(360.0, 460.0))
    half_w = float(min(rng.normal(150.0, 14.0), fov / 2.0 - 18.0))
    half_w = max(half_w, 130.0)
    half_v = float(np.clip(half_w * rng.normal(0.72, 0.05), 90.0, fov / 2.0 - 30.0))
    fat = float(np.clip(rng.normal(12.0 + 0.25 * (half_w - 120.0), 6.0), 6.0, 0.2 * half_w))
    wall = float(rng.uniform(8.0, 14.0))
    shift = (float(rng.normal(8.0, 5.0)), float(rng.normal(0.0, 5.0)))  # table below: body a bit posterior
    spine_v = half_v - fat - wall - float(rng.uniform(38.0, 50.0))
    cavity_w = half_w - fat - wall

    # Left/right kidney differences (the proxy task's signal): right lower and slightly smaller.
    left_len = float(np.clip(rng.normal(112.0, 8.0), 90.0, 135.0))
    right_len = float(np.clip(left_len - rng.normal(5.0, 4.0), 85.0, 135.0))
    right_scale = float(rng.normal(0.97, 0.03))
    drop = float(np.clip(rng.normal(15.0, 6.0), 0.0, 35.0))  # right centre below left, mm
    cortex = float(rng.uniform(170.0, 250.0))
    medulla = cortex - float(rng.uniform(60.0, 110.0))
    missing: Side | None = None
    if rng.random() < SINGLE_KIDNEY_RATE:
        missing = Side.LEFT if rng.random() < 0.5 else Side.RIGHT
    n_tumours = {Side.LEFT: 0, Side.RIGHT: 0}
    if rng.random() < TUMOUR_RATE:
        sides = [s for s in Side if s is not missing]
        n_tumours[sides[int(rng.integers(len(sides)))]] += 1 if rng.random() < 0.85 else 2
    kidneys: dict[Side, KidneyAnatomy] = {}
    for side in (Side.LEFT, Side.RIGHT):
        kid_rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xA7A, 1 + (side is Side.RIGHT)]))
        level = -drop / 2.0 if side is Side.LEFT else drop / 2.0
        length = left_len if side is Side.LEFT else right_len
        scale = 1.0 if side is Side.LEFT else right_scale
        kidney = _kidney(kid_rng, side, level + rng.normal(0.0, 2.0), float(np.clip(rng.normal(72.0, 6.0), 55.0, cavity_w - 30.0)), spine_v,
                         length, scale, (cortex, medulla), n_tumours[side])
        if side is not missing:
            kidneys[side] = kidney
    liver = float(rng.uniform(55.0, 100.0))
    hu = {
        "fat": float(rng.uniform(-110.0, -85.0)),
        "muscle": float(rng.uniform(40.0, 60.0)),
        "liver": liver,
        "spleen": liver + float(rng.uniform(-5.0, 25.0)),
        "aorta": float(rng.uniform(200.0, 350.0)),
        "ivc": float(rng.uniform(100.0, 170.0)),
        "portal": liver + float(rng.uniform(60.0, 120.0)),
        "bone_cortical": float(rng.uniform(450.0, 700.0)),
        "bone_cancellous": float(rng.uniform(170.0, 260.0)),
        "pancreas": float(rng.uniform(80.0, 120.0)),
        "bowel_wall": float(rng.uniform(60.0, 110.0)),
        "fluid": float(rng.uniform(0.0, 25.0)),
        "noise_sd": float(rng.uniform(10.0, 20.0)),
        "bias_sd": float(rng.uniform(4.0, 12.0)),
    }
    params = {
        "liver_u": float(-drop / 2.0 - rng.uniform(55.0, 80.0)),
        "liver_scale": float(rng.normal(1.0, 0.08)),
        "spleen_scale": float(rng.normal(1.0, 0.12)),
        "aorta_w": float(rng.uniform(8.0, 18.0)),
        "ivc_w": float(-rng.uniform(15.0, 25.0)),
        "aorta_r": float(rng.uniform(9.0, 13.0)),
        "vertebra_phase": float(rng.uniform(0.0, 34.0)),
        "bifurcation_u": float(rng.uniform(70.0, 110.0)),
        "stomach_fill": float(rng.uniform(0.2, 0.7)),
        "gallbladder": float(rng.random() < 0.7),
        "colon_gas": float(rng.uniform(0.1, 0.6)),
    }
    return PhantomAnatomy(seed=int(seed), kidneys=kidneys, body_half_axes=(half_v, half_w), fat_mm=fat,
                          wall_mm=wall, fov_mm=fov, body_shift_mm=shift, spine_v=spine_v, hu=hu, params=params)
