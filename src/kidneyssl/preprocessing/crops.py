"""Fixed-size boxes of canonical ``(Z, Y, X)`` arrays, zero-padded where they leave the array:
the proxy task's kidney crops (paper, section 2: 64 x 112 x 112 voxels around each kidney)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kidneyssl.preprocessing.split_plane import check_3d

__all__ = ["crop_padded", "kidney_crop"]

def crop_padded(array: np.ndarray, start: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """Copy the box ``[start, start + size)`` of the last three axes, zero where it leaves the array.

    Only the in-bounds part is read, so memory-mapped arrays stay on disk except for the box.
    """
    if len(start) != 3 or len(size) != 3:
        raise ValueError(f"start and size must have 3 entries, got {start!r} and {size!r}")
    if any(int(s) < 1 for s in size):
        raise ValueError(f"crop size must be positive, got {tuple(size)}")
    dims = array.shape[-3:]
    out = np.zeros(array.shape[:-3] + tuple(int(s) for s in size), dtype=array.dtype)
    src, dst = [], []
    for st, sz, n in zip(start, size, dims):
        st, sz = int(st), int(sz)
        a, b = max(st, 0), min(st + sz, n)
        if a >= b:
            return out  # the box misses the array entirely
        src.append(slice(a, b))
        dst.append(slice(a - st, b - st))
    dst_index: Any = (Ellipsis, *dst)
    src_index: Any = (Ellipsis, *src)
    out[dst_index] = array[src_index]
    return out


def kidney_crop(
    image: np.ndarray,
    center: Sequence[int],
    size: Sequence[int] = (64, 112, 112),
    label: np.ndarray | None = None,
    mask_outside: bool = False,
) -> np.ndarray:
    """Fixed-size crop of a canonical ``(Z, Y, X)`` image centred on a kidney, zero-padded.

    The box starts at ``center - size // 2`` on each axis (so a box of even size covers the
    kidney's bbox exactly when the bbox has that size); parts outside the volume are zeros.

    Args:
        image: ``(Z, Y, X)`` array (e.g. a memory-mapped cache image).
        center: (z, y, x) voxel index, e.g. :attr:`KidneyLocation.center`.
        size: crop size (z, y, x) in voxels (paper: 64 x 112 x 112 at 3.22 x 1.62 x 1.62 mm;
            ``PretrainConfig.crop_size``).
        label: labels on the same grid, needed for ``mask_outside``. Kidney = ``label > 0``; pass a
            label restricted to one half to keep the other kidney out.
        mask_outside: zero every voxel outside the kidney mask (the authors' code). Default off:
            the paper's text passes the whole region around the kidney.

    Returns:
        ``size``-shaped array of ``image``'s dtype.
    """
    check_3d(image, "image")
    if len(center) != 3:
        raise ValueError(f"center must be (z, y, x), got {center!r}")
    start = [int(c) - int(s) // 2 for c, s in zip(center, size)]
    crop = crop_padded(image, start, size)
    if mask_outside:
        if label is None:
            raise ValueError("mask_outside=True needs the label array")
        if label.shape != image.shape:
            raise ValueError(f"label shape {label.shape} differs from image shape {image.shape}")
        crop[crop_padded(label, start, size) == 0] = 0
    return crop
