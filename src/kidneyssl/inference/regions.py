"""Where in a preprocessed image the network needs to run: the body's bounding box.

CT images hold air around the patient (often a third of a 512 x 512 slice). After the HU window
air and fat both sit at the window's floor; the box holds every voxel above it (skin, muscle,
organs, bone, the scanner table), so no tissue the network could call kidney is left out.
"""

from __future__ import annotations

import numpy as np

from kidneyssl.preprocessing.spatial import bounding_box

__all__ = ["body_box"]

#: A voxel is inside the body when it is above the image's floor by this share of its range.
_BODY_LEVEL = 0.05


def _grow(box: slice, size: int, multiple: int) -> slice:
    """``box`` grown about its centre to a multiple of ``multiple`` (or to ``size``), clamped."""
    length = box.stop - box.start
    target = min(size, -(-length // multiple) * multiple)
    start = max(0, min(box.start - (target - length) // 2, size - target))
    return slice(start, start + target)


def body_box(image: np.ndarray, multiple: int = 16, margin: int = 4) -> tuple[slice, slice, slice]:
    """The box of a canonical ``(Z, Y, X)`` preprocessed image that holds the body.

    Body voxels are above ``lo + 0.05 * (p99 - lo)`` (``lo`` = the image's minimum, the HU
    window's floor), padding (exact zeros) excluded; the box gets ``margin`` voxels on every side
    and grows about its centre to a multiple of ``multiple`` (the network's size multiple), within
    the image. Without a body (or a flat image) it is the whole image.
    """
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3-D (Z, Y, X) array, got shape {image.shape}")
    whole = (slice(0, image.shape[0]), slice(0, image.shape[1]), slice(0, image.shape[2]))
    sub = image[::2, ::2, ::2]  # the level only needs the intensity range
    values = sub[sub != 0]
    if values.size == 0:
        return whole
    lo = float(values.min())
    hi = float(np.percentile(values, 99))
    if hi <= lo:
        return whole
    body = (image > lo + _BODY_LEVEL * (hi - lo)) & (image != 0)
    box = bounding_box(body, margin=margin)
    if box is None:
        return whole
    grown = tuple(_grow(b, n, multiple) for b, n in zip(box, image.shape))
    return grown  # type: ignore[return-value]
