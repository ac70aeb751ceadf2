"""Geometry that travels with every array, and reorientation to one canonical orientation.

Canonical orientation is KiTS19's own storage order, axis codes ``('I', 'P', 'L')`` in nibabel's
convention: array axis 0 runs towards the patient's inferior, axis 1 towards posterior, axis 2
towards the patient's **left**. So in canonical arrays the lateral axis is 2, and patient-left
voxels have the larger x index. KiTS19 cases need no reorientation; any other scan (e.g. RAS) is
transposed/flipped into it, and the :class:`Reorientation` record maps results back exactly.

Spacing tuples are in array-axis order (z, y, x) everywhere; only :mod:`kidneyssl.io.volumes`
knows SimpleITK's reversed order.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations as nio

from kidneyssl.types import spacing3

__all__ = [
    "CANONICAL_AXCODES",
    "LATERAL_AXIS",
    "Side",
    "Geometry",
    "Volume",
    "Reorientation",
    "to_canonical",
    "from_canonical",
    "obliquity_deg",
]

CANONICAL_AXCODES: tuple[str, str, str] = ("I", "P", "L")
#: In canonical orientation, array axis 2 runs from the patient's right to the patient's left.
LATERAL_AXIS: int = 2


class Side(str, enum.Enum):
    """A patient side (anatomical, never "image left")."""

    LEFT = "left"
    RIGHT = "right"

    @property
    def opposite(self) -> "Side":
        return Side.RIGHT if self is Side.LEFT else Side.LEFT


@dataclass(frozen=True)
class Geometry:
    """Voxel-to-world mapping of a 3-D array: a 4x4 RAS+ affine (nibabel convention) and a shape.

    ``spacing`` (mm, array-axis order) and ``axcodes`` are derived from the affine.
    """

    affine: np.ndarray
    shape: tuple[int, int, int]

    def __post_init__(self) -> None:
        affine = np.asarray(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        if len(self.shape) != 3:
            raise ValueError(f"Geometry is for 3-D arrays, got shape {tuple(self.shape)}")
        object.__setattr__(self, "affine", affine)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        return spacing3(np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def axcodes(self) -> tuple[str, str, str]:
        """nibabel axis codes: the direction each array axis's index grows towards."""
        return tuple(nio.aff2axcodes(self.affine))

    def same_as(self, other: "Geometry", atol: float = 1e-3) -> bool:
        """Same shape and (to ``atol`` mm) the same affine."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))

    def to_dict(self) -> dict[str, Any]:
        return {"affine": self.affine.tolist(), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Geometry":
        return cls(affine=np.asarray(data["affine"], dtype=np.float64), shape=tuple(data["shape"]))

    def __repr__(self) -> str:
        sp = "x".join(f"{s:.3g}" for s in self.spacing)
        return f"Geometry(shape={self.shape}, spacing_mm={sp}, axcodes={''.join(self.axcodes)})"


@dataclass
class Volume:
    """A 3-D array together with its :class:`Geometry`. Arrays never travel without it."""

    array: np.ndarray
    geometry: Geometry

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume arrays must be 3-D, got shape {self.array.shape}")
        if tuple(self.array.shape) != self.geometry.shape:
            raise ValueError(
                f"array shape {self.array.shape} does not match geometry shape {self.geometry.shape}"
            )

    @property
    def spacing(self) -> tuple[float, float, float]:
        return self.geometry.spacing

    def __repr__(self) -> str:
        mb = self.array.nbytes / 2**20
        return f"Volume({self.array.dtype}, {self.geometry!r}, {mb:.1f} MiB)"


@dataclass(frozen=True)
class Reorientation:
    """Record of a reorientation to canonical axes, invertible exactly.

    Attributes:
        original: geometry of the input as stored on disk.
        ornt: nibabel orientation transform (3x2: target axis, flip) from original to canonical.
    """

    original: Geometry
    ornt: np.ndarray

    @property
    def is_identity(self) -> bool:
        return bool(np.array_equal(self.ornt, [[0, 1], [1, 1], [2, 1]]))

    @property
    def canonical_geometry(self) -> Geometry:
        shape = self.original.shape
        new_shape = tuple(int(shape[int(i)]) for i in np.argsort(self.ornt[:, 0]))
        affine = self.original.affine @ nio.inv_ornt_aff(self.ornt, shape)
        return Geometry(affine=affine, shape=new_shape)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {"original": self.original.to_dict(), "ornt": self.ornt.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reorientation":
        return cls(original=Geometry.from_dict(data["original"]), ornt=np.asarray(data["ornt"]))


def obliquity_deg(affine: np.ndarray) -> float:
    """Largest angle (degrees) between a voxel axis and the world axis it is closest to.

    0 for an axis-aligned grid; reorientation to canonical axes (permute and flip) snaps an oblique
    grid to the nearest axes, ignoring this angle.
    """
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    norms = np.linalg.norm(columns, axis=0)
    if not (norms > 0).all():
        return 0.0
    cosines = np.abs(columns / norms).max(axis=0)
    return float(np.degrees(np.arccos(np.clip(cosines, -1.0, 1.0))).max())


def ornt_to_canonical(affine: np.ndarray) -> np.ndarray:
    """nibabel orientation transform from an affine's voxel axes to the canonical (I, P, L) axes."""
    src = nio.io_orientation(affine)
    dst = nio.axcodes2ornt(CANONICAL_AXCODES)
    return nio.ornt_transform(src, dst)


def to_canonical(volume: Volume) -> tuple[Volume, Reorientation]:
    """Reorient ``volume`` to canonical ``('I', 'P', 'L')`` axes (no resampling: permute and flip).

    Returns the reoriented volume (a view when possible; never a mutated input) and the record
    that :func:`from_canonical` uses to undo it.
    """
    ornt = ornt_to_canonical(volume.geometry.affine)
    record = Reorientation(original=volume.geometry, ornt=ornt)
    if record.is_identity:
        return Volume(volume.array, volume.geometry), record
    array = nio.apply_orientation(volume.array, ornt)
    return Volume(np.ascontiguousarray(array), record.canonical_geometry), record


def from_canonical(array: np.ndarray, record: Reorientation) -> np.ndarray:
    """Map a canonical-orientation array back to the original array layout of ``record``."""
    expected = record.canonical_geometry.shape
    if tuple(array.shape) != expected:
        raise ValueError(f"array shape {array.shape} is not the canonical shape {expected}")
    if record.is_identity:
        return array
    back = nio.ornt_transform(nio.axcodes2ornt(CANONICAL_AXCODES), nio.io_orientation(record.original.affine))
    return np.ascontiguousarray(nio.apply_orientation(array, back))
