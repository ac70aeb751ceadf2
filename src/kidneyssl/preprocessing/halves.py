"""The two half volumes of a canonical ``(Z, Y, X)`` grid: THE definition of a half, shared by
training (:class:`kidneyssl.data.segmentation.HalfVolumeDataset`) and inference
(:func:`kidneyssl.inference.sliding_window.infer_volume`).

Axis 2 is the lateral axis and runs towards the patient's LEFT, so columns ``x < split_x`` form the
patient-RIGHT half and columns ``x >= split_x`` the patient-LEFT half (the plane comes from
:func:`kidneyssl.preprocessing.split_plane.find_split_x`). Each half carries some context across
the plane; :func:`stitch_halves` keeps each side's own columns.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from kidneyssl.io.geometry import Side

__all__ = ["half_bounds", "split_halves", "stitch_halves"]

def _ceil_to(value: int, multiple: int) -> int:
    return -(-int(value) // int(multiple)) * int(multiple)


def half_bounds(width: int, split_x: int, context: int = 0, multiple: int = 1) -> dict[Side, slice]:
    """Lateral extents of the two half volumes: THE definition of a half, for training and
    inference alike.

    The patient-RIGHT half is ``x < split_x``, the patient-LEFT half ``x >= split_x``; each extends
    ``context`` voxels across the plane (real image context), then further until its width is a
    multiple of ``multiple`` (more real context rather than zero padding), clamped to the grid.
    :func:`stitch_halves` keeps only each side's own columns.

    Args:
        width: size of the lateral axis.
        split_x: split plane, ``0 <= split_x <= width``.
        context: voxels of context across the plane, ``>= 0``.
        multiple: half widths are rounded up to a multiple of this (16 for the network; a grid
            whose width is a multiple of 16 then gives halves that need no padding).

    Returns:
        ``{Side.RIGHT: slice(0, x1), Side.LEFT: slice(x0, width)}``.
    """
    if not 0 <= split_x <= width:
        raise ValueError(f"split_x {split_x} outside the lateral extent [0, {width}]")
    if context < 0:
        raise ValueError(f"context must be >= 0, got {context}")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    right_stop = min(width, _ceil_to(split_x + context, multiple))
    left_start = max(0, width - _ceil_to(width - split_x + context, multiple))
    return {Side.RIGHT: slice(0, right_stop), Side.LEFT: slice(left_start, width)}


def split_halves(array: np.ndarray, split_x: int, context: int = 0,
                 multiple: int = 1) -> dict[Side, np.ndarray]:
    """Cut an array along its last (lateral) axis into patient-RIGHT and patient-LEFT halves.

    Args:
        array: ``(..., Z, Y, X)`` canonical array (leading channel axes allowed).
        split_x: plane from :func:`find_split_x`.
        context, multiple: as in :func:`half_bounds`.

    Returns:
        ``{Side.RIGHT: array[..., right], Side.LEFT: array[..., left]}`` with the slices of
        :func:`half_bounds` (views into ``array``, not copies).
    """
    bounds = half_bounds(array.shape[-1], split_x, context, multiple)
    return {side: array[..., cols] for side, cols in bounds.items()}


def stitch_halves(halves: Mapping[Side, np.ndarray], split_x: int, width: int, context: int = 0,
                  multiple: int = 1) -> np.ndarray:
    """Inverse of :func:`split_halves`: the full ``(..., X=width)`` array from its two halves.

    Each half contributes its own side's columns only (RIGHT: ``x < split_x``; LEFT: the rest), so
    ``stitch_halves(split_halves(a, s, c, m), s, a.shape[-1], c, m)`` equals ``a`` exactly.

    Raises:
        ValueError: a half is missing, has the wrong width, or leading shapes differ.
    """
    bounds = half_bounds(width, split_x, context, multiple)
    for side in (Side.RIGHT, Side.LEFT):
        if side not in halves:
            raise ValueError(f"stitch_halves needs both halves, {side.value} is missing")
        cols = bounds[side]
        if halves[side].shape[-1] != cols.stop - cols.start:
            raise ValueError(
                f"{side.value} half has width {halves[side].shape[-1]}, expected "
                f"{cols.stop - cols.start} (split_x={split_x}, width={width}, context={context}, "
                f"multiple={multiple})"
            )
    right, left = halves[Side.RIGHT], halves[Side.LEFT]
    if right.shape[:-1] != left.shape[:-1]:
        raise ValueError(f"half shapes differ outside the lateral axis: {right.shape} vs {left.shape}")
    own_left_start = split_x - bounds[Side.LEFT].start
    return np.concatenate([right[..., :split_x], left[..., own_left_start:]], axis=-1)
