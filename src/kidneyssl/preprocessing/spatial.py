"""Resampling to a voxel spacing, padding to a multiple, and their exact inverses.

Grid convention (same as ``torch.nn.functional.interpolate(..., align_corners=False)`` and
``scipy.ndimage.zoom(..., grid_mode=True)``): resampling an axis of ``n`` voxels to ``m`` voxels keeps
the field of view (outer voxel edges) fixed; output voxel ``i`` samples input coordinate
``(i + 0.5) * n / m - 0.5``. With ``m = round(n * spacing / target)`` the actual spacing is
``spacing * n / m`` (within half a voxel of the target over the whole field of view; it is
recorded), and resampling back to ``n`` voxels is the exact geometric inverse.
:func:`resampled_affine` gives the new grid's affine.

Why hand-written rather than SimpleITK / MONAI ``Spacing`` / ``torch.interpolate``: trilinear
interpolation is a tensor product, so we apply it as three 1-D passes (2 taps each; 4 for cubic),
axis with the largest reduction first, in the array's memory order, in chunks on a small thread
pool. That never makes a float32 copy of the full-resolution input (an int16 CT stays int16 until
the first pass has shrunk it). Measured on a 300 x 512 x 512 int16 CT on 2 cores
(``benchmarks/bench_preprocess.py``, ``results/preprocess.json``): 0.057 s, level with SimpleITK's
resampler (0.058 s) but with ~5x its extra memory (130 vs 25 MB above the input), 14x faster than
MONAI's ``Spacing`` (0.80 s) and 2.5x faster than ``torch.interpolate`` (0.14 s, 326 MB). What it
adds over SimpleITK is the exact inverse record and label resampling without invented values; it
equals torch's trilinear ``align_corners=False`` to float32 precision (tested).

Labels never get invented values: a binary mask is interpolated linearly as a float and
thresholded at 0.5 (smoother boundaries than nearest neighbour, no staircase); a multi-label map
is interpolated per label (one-hot) and the arg-max taken; ``order="nearest"`` is also offered.
When downsampling, label indicators are anti-aliased first (triangle filter over every voxel a
target voxel covers, as PIL / torch ``antialias=True``), so the 0.5 threshold applies to the
covered fraction rather than to a few sampled voxels (Dice of a phantom round trip at 2.5x
downsampling: 0.968 without, > 0.97 with). Even so a binary kidney mask at 3.22 x 1.62 x 1.62 mm
comes back with Dice ~0.98-0.99 only; the soft fraction (``antialias=True`` on the indicator as
an image) keeps Dice > 0.99 through a round trip.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from kidneyssl.system import available_cpus
from kidneyssl.types import Shape3, Spacing3

__all__ = [
    "IMAGE_ORDERS",
    "LABEL_ORDERS",
    "Padding",
    "resampled_shape",
    "resampled_affine",
    "resample_to_shape",
    "resample_to_spacing",
    "pad_to_multiple",
    "unpad",
    "bounding_box",
]

IMAGE_ORDERS = ("nearest", "linear", "cubic")
LABEL_ORDERS = ("nearest", "linear")
_CUBIC_A = -0.75  # cubic convolution as torch's bicubic (and OpenCV); Keys' is -0.5
_CHUNK_ELEMENTS = 1 << 20  # elements per chunk of a pass (4 MiB of float32: stays in cache)


def resampled_shape(shape: Sequence[int], spacing_mm: Sequence[float],
                    target_spacing_mm: Sequence[float]) -> Shape3:
    """Voxel count per axis after resampling: ``round(n * spacing / target)``, at least 1."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in  # type: ignore[return-value]
                 zip(shape, spacing_mm, target_spacing_mm))


def resampled_affine(affine: np.ndarray, in_shape: Sequence[int],
                     out_shape: Sequence[int]) -> np.ndarray:
    """Affine of the grid that :func:`resample_to_shape` produces (same field of view).

    Output index ``i`` sits at input index ``(i + 0.5) * n / m - 0.5`` on every axis.
    """
    scale = np.array([n / m for n, m in zip(in_shape, out_shape)], dtype=np.float64)
    index_map = np.eye(4)
    index_map[:3, :3] = np.diag(scale)
    index_map[:3, 3] = 0.5 * scale - 0.5
    return np.asarray(affine, dtype=np.float64) @ index_map


def _antialias_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """Triangle filter stretched to the output voxel size (downsampling), as PIL and torch's
    ``interpolate(..., antialias=True)`` compute it: every input voxel contributes by overlap."""
    scale = n_in / n_out
    support = scale
    centers = scale * (np.arange(n_out, dtype=np.float64) + 0.5)
    xmin = np.maximum(np.trunc(centers - support + 0.5), 0).astype(np.intp)
    xmax = np.minimum(np.trunc(centers + support + 0.5), n_in).astype(np.intp)
    ntaps = int((xmax - xmin).max())
    j = xmin[None, :] + np.arange(ntaps)[:, None]
    valid = j < xmax[None, :]
    weights = np.where(valid, np.maximum(0.0, 1.0 - np.abs((j - centers[None, :] + 0.5) / scale)), 0.0)
    weights /= weights.sum(axis=0, keepdims=True)
    return np.where(valid, j, 0).astype(np.intp), weights.astype(np.float32)


def _taps(n_in: int, n_out: int, order: str,
          antialias: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (taps, n_out) and float32 weights (taps, n_out) for one axis."""
    scale = n_in / n_out
    if antialias and order == "linear" and scale > 1.0:
        return _antialias_taps(n_in, n_out)
    out = np.arange(n_out, dtype=np.float64)
    if order == "nearest":
        idx = np.minimum(np.floor((out + 0.5) * scale), n_in - 1).astype(np.intp)
        return idx[None], np.ones((1, n_out), dtype=np.float32)
    x = (out + 0.5) * scale - 0.5
    if order == "linear":
        x = np.clip(x, 0.0, n_in - 1)
        i0 = np.minimum(np.floor(x), max(n_in - 2, 0)).astype(np.intp)
        t = x - i0
        idx = np.stack([i0, np.minimum(i0 + 1, n_in - 1)])
        weights = np.stack([1.0 - t, t])
    elif order == "cubic":
        i0 = np.floor(x).astype(np.intp)
        t = x - i0
        idx = np.clip(np.stack([i0 - 1, i0, i0 + 1, i0 + 2]), 0, n_in - 1)
        d = np.stack([1.0 + t, t, 1.0 - t, 2.0 - t])  # distance to each tap
        a = _CUBIC_A
        weights = np.where(d <= 1.0, (a + 2) * d**3 - (a + 3) * d**2 + 1,
                           a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a)
    else:
        raise ValueError(f"unknown interpolation order {order!r}; use one of {IMAGE_ORDERS}")
    return idx, weights.astype(np.float32)


def _default_threads() -> int:
    return min(4, available_cpus())


def _run_chunks(fn: Callable[[slice], None], length: int, per_index: int, threads: int,
                step: int | None = None) -> None:
    step = step or max(1, _CHUNK_ELEMENTS // max(per_index, 1))
    slices = [slice(i, min(i + step, length)) for i in range(0, length, step)]
    if threads <= 1 or len(slices) == 1:
        for sl in slices:
            fn(sl)
        return
    with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy releases the GIL in take/ufuncs
        list(pool.map(fn, slices))


def _axis_pass(channels: list[np.ndarray], axis: int, n_out: int, order: str, threads: int,
               combine: Callable[[list[np.ndarray]], np.ndarray] | None,
               out_dtype: Any, antialias: bool = False) -> list[np.ndarray]:
    """Resample every channel along ``axis``; with ``combine`` merge them chunk-wise into one."""
    src_shape = channels[0].shape
    idx, weights = _taps(src_shape[axis], n_out, order, antialias)
    wshape = [1] * len(src_shape)
    wshape[axis] = n_out
    w = [weights[k].reshape(wshape) for k in range(len(weights))]
    out_shape = list(src_shape)
    out_shape[axis] = n_out
    chunk_axis = 0 if axis != 0 else 1
    n_outputs = 1 if combine is not None else len(channels)
    outs = [np.empty(out_shape, dtype=out_dtype) for _ in range(n_outputs)]
    per_index = math.prod(out_shape) // max(out_shape[chunk_axis], 1)

    def work(sl: slice) -> None:
        key = (slice(None),) * chunk_axis + (sl,)
        results = []
        for ch in channels:
            src = ch[key]
            if order == "nearest":
                results.append(np.take(src, idx[0], axis=axis))
                continue
            acc = np.take(src, idx[0], axis=axis).astype(np.float32, copy=False)
            acc = acc * w[0]
            for k in range(1, len(idx)):
                acc += np.take(src, idx[k], axis=axis) * w[k]
            results.append(acc)
        if combine is not None:
            outs[0][key] = combine(results)
        else:
            for o, r in zip(outs, results):
                o[key] = r

    _run_chunks(work, out_shape[chunk_axis], per_index, threads)
    return outs


def _plane_pass(channels: list[np.ndarray], out_hw: Sequence[int], order: str,
                combine: Callable[[list[np.ndarray]], np.ndarray] | None,
                out_dtype: Any, antialias: bool = False, threads: int = 1) -> np.ndarray:
    """Resample axes 1 and 2 of C-ordered ``channels`` with torch's 2-D kernels, in slabs of axis 0.

    ``torch.nn.functional.interpolate`` (bilinear/bicubic with ``align_corners=False``,
    ``nearest-exact``) uses exactly the grid convention of this module; slabs keep the float32
    working copy small (an int16 input is converted slab by slab).
    """
    import torch
    import torch.nn.functional as F

    mode = {"nearest": "nearest-exact", "linear": "bilinear", "cubic": "bicubic"}[order]
    kwargs: dict[str, Any] = {} if order == "nearest" else {"align_corners": False}
    if antialias and order == "linear":
        kwargs["antialias"] = True
    n0, h, w = channels[0].shape
    out = np.empty((n0, int(out_hw[0]), int(out_hw[1])), dtype=out_dtype)
    step = max(1, _CHUNK_ELEMENTS // max(h * w + int(out_hw[0]) * int(out_hw[1]), 1))
    size = (int(out_hw[0]), int(out_hw[1]))

    def work(sl: slice) -> None:
        parts = []
        for ch in channels:
            slab = ch[sl]
            if slab.dtype == bool:
                slab = slab.view(np.uint8)
            # numpy's int16 -> float32 cast is ~3x faster than torch's .float() here
            tensor = torch.from_numpy(slab.astype(np.float32))[:, None]
            if (h, w) != size:
                tensor = F.interpolate(tensor, size=size, mode=mode, **kwargs)
            parts.append(tensor[:, 0].numpy())
        out[sl] = combine(parts) if combine is not None else parts[0]

    # Slabs on a small thread pool: the casts (numpy) and kernels (torch) release the GIL.
    _run_chunks(work, n0, 0, threads, step=step)
    return out


def _resample(channels: list[np.ndarray], out_shape: Sequence[int], order: str,
              combine: Callable[[list[np.ndarray]], np.ndarray] | None, out_dtype: Any,
              threads: int | None, antialias: bool = False) -> np.ndarray:
    """Separable resampling of same-shaped ``channels`` in their memory order.

    The two fast (in-memory) axes go through torch's 2-D kernels slab by slab, the slow axis
    through a 1-D numpy pass (whole-slab gathers); whichever order keeps the intermediate
    smaller runs first, and the last step applies ``combine`` chunk by chunk.
    """
    threads = threads or _default_threads()
    # Work in memory order (largest stride first) so slabs are contiguous and no copy is made.
    perm = [int(a) for a in np.argsort([-s for s in channels[0].strides], kind="stable")]
    inv = np.argsort(perm)
    chans = [c.transpose(perm) for c in channels]
    target = [int(out_shape[p]) for p in perm]
    src = chans[0].shape
    work_dtype = np.float32 if order != "nearest" else chans[0].dtype
    slow_changes = src[0] != target[0]
    plane_first = src[0] * target[1] * target[2] <= target[0] * src[1] * src[2]
    aa = antialias
    if not slow_changes:
        out = _plane_pass(chans, target[1:], order, combine, out_dtype, aa, threads)
    elif plane_first:
        mid = [_plane_pass([c], target[1:], order, None, work_dtype, aa, threads) for c in chans]
        out = _axis_pass(mid, 0, target[0], order, threads, combine, out_dtype, aa)[0]
    else:
        mid = _axis_pass(chans, 0, target[0], order, threads, None, work_dtype, aa)
        out = _plane_pass(mid, target[1:], order, combine, out_dtype, aa, threads)
    return out.transpose(inv)


def _label_values(label: np.ndarray) -> list[int]:
    if not (np.issubdtype(label.dtype, np.integer) or label.dtype == bool):
        raise ValueError(f"label maps must have an integer dtype, got {label.dtype}")
    if label.size == 0:
        return []
    flat = label.ravel(order="K")  # a view for C- or F-ordered arrays (fast comparisons)
    if label.dtype == bool:
        return [1] if flat.any() else []
    lo, hi = int(flat.min()), int(flat.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"label values must lie in 0..255, found range [{lo}, {hi}]")
    if hi <= 1:
        return [hi] if hi == 1 else []
    return [v for v in range(1, hi + 1) if (flat == v).any()]


def resample_to_shape(array: np.ndarray, out_shape: Sequence[int], order: str = "linear",
                      is_label: bool = False, threads: int | None = None,
                      antialias: bool = False, threshold: float | None = None) -> np.ndarray:
    """Resample a 3-D ``array`` to ``out_shape`` voxels over the same field of view.

    Args:
        array: (Z, Y, X) image (any numeric dtype) or label map (integers 0..255), any memory
            layout (Fortran-ordered views are processed without copying).
        out_shape: target shape.
        order: images: ``nearest``, ``linear`` (trilinear) or ``cubic`` (cubic convolution,
            a = -0.75 as torch's bicubic); labels: ``nearest`` or ``linear`` (per-label
            linear interpolation, anti-aliased when downsampling, then arg-max: a 0.5 threshold
            of the covered fraction for binary masks).
        is_label: treat ``array`` as a label map; the result is uint8 and holds only values present
            in the input.
        threads: worker threads (default: available cores, at most 4).
        antialias: images, ``linear`` only: when downsampling, average every input voxel a
            target voxel covers (triangle filter, as PIL / torch ``antialias=True``); off by
            default, like SimpleITK's and MONAI's resamplers.
        threshold: images only: return the uint8 mask ``resampled >= threshold``, computed chunk
            by chunk (no full-size float32 result), e.g. to map probabilities back to a scan.

    Returns:
        float32 image, or uint8 labels / thresholded mask, of shape ``out_shape`` (possibly a
        non-contiguous view).
    """
    if array.ndim != 3 or len(out_shape) != 3:
        raise ValueError(f"expected a 3-D array and a 3-D shape, got {array.shape} -> {out_shape}")
    if any(int(n) < 1 for n in out_shape):
        raise ValueError(f"target shape must be positive, got {tuple(out_shape)}")
    if not is_label:
        if order not in IMAGE_ORDERS:
            raise ValueError(f"image order must be one of {IMAGE_ORDERS}, got {order!r}")
        if array.dtype == bool:
            array = array.view(np.uint8)
        if threshold is None:
            return _resample([array], out_shape, order, None, np.float32, threads, antialias)
        level = float(threshold)

        def binarize(parts: list[np.ndarray]) -> np.ndarray:
            return parts[0] >= level

        return _resample([array], out_shape, order, binarize, np.uint8, threads, antialias)
    if threshold is not None:
        raise ValueError("threshold applies to images (e.g. probabilities), not label maps")
    if order not in LABEL_ORDERS:
        raise ValueError(f"label order must be one of {LABEL_ORDERS}, got {order!r}")
    values = _label_values(array)
    if order == "nearest" or not values:
        out = _resample([array], out_shape, "nearest", None, np.uint8, threads)
        return out if values else np.zeros(tuple(int(n) for n in out_shape), dtype=np.uint8)
    if len(values) == 1:
        value = values[0]
        indicator = array if (array.dtype == bool or (array.dtype == np.uint8 and value == 1
                                                       and len(values) == 1 and _is_binary(array))) \
            else (array == value)
        indicator = indicator.view(np.uint8) if indicator.dtype == bool else indicator

        def binarise(parts: list[np.ndarray]) -> np.ndarray:
            return (parts[0] >= 0.5).astype(np.uint8) * np.uint8(value)

        return _resample([indicator], out_shape, "linear", binarise, np.uint8, threads,
                         antialias=True)
    lut = np.array([0] + values, dtype=np.uint8)
    indicators = [(array == v).view(np.uint8) for v in values]

    def argmax(parts: list[np.ndarray]) -> np.ndarray:
        background = 1.0 - np.sum(parts, axis=0)
        return lut[np.argmax(np.stack([background, *parts]), axis=0)]

    return _resample(indicators, out_shape, "linear", argmax, np.uint8, threads, antialias=True)


def _is_binary(array: np.ndarray) -> bool:
    return array.dtype == bool or int(array.ravel(order="K").max()) <= 1


def resample_to_spacing(array: np.ndarray, spacing_mm: Sequence[float],
                        target_spacing_mm: Sequence[float], order: str = "linear",
                        is_label: bool = False,
                        threads: int | None = None) -> tuple[np.ndarray, Spacing3]:
    """Resample ``array`` (spacing ``spacing_mm``, array-axis order) to ~``target_spacing_mm``.

    Returns the resampled array (see :func:`resample_to_shape`) and its actual spacing in mm,
    ``spacing * n / round(n * spacing / target)`` per axis.
    """
    out_shape = resampled_shape(array.shape, spacing_mm, target_spacing_mm)
    out = resample_to_shape(array, out_shape, order=order, is_label=is_label, threads=threads)
    actual = tuple(float(s * n / m) for s, n, m in zip(spacing_mm, array.shape, out_shape))
    return out, actual  # type: ignore[return-value]


@dataclass(frozen=True)
class Padding:
    """Voxels added before and after each axis by :func:`pad_to_multiple`."""

    before: tuple[int, int, int]
    after: tuple[int, int, int]

    def to_dict(self) -> dict[str, list[int]]:
        return {"before": list(self.before), "after": list(self.after)}

    @classmethod
    def from_dict(cls, data: dict[str, Sequence[int]]) -> "Padding":
        before, after = (tuple(int(v) for v in data[k]) for k in ("before", "after"))
        if len(before) != 3 or len(after) != 3:
            raise ValueError(f"padding needs 3 values per side, got {data!r}")
        return cls((before[0], before[1], before[2]), (after[0], after[1], after[2]))


def pad_to_multiple(array: np.ndarray, multiple: int, value: float = 0.0,
                    mode: str = "symmetric") -> tuple[np.ndarray, Padding]:
    """Pad every axis with ``value`` up to the next multiple of ``multiple``.

    ``mode="symmetric"`` puts ``total // 2`` voxels before and the rest after (keeps the volume
    centred, so the sagittal midline stays mid-array); ``mode="end"`` pads after only.
    Returns a new C-contiguous array and the :class:`Padding` that :func:`unpad` undoes.
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    if mode not in ("symmetric", "end"):
        raise ValueError(f"mode must be 'symmetric' or 'end', got {mode!r}")
    totals = [(-n) % multiple for n in array.shape]
    before = tuple(t // 2 if mode == "symmetric" else 0 for t in totals)
    after = tuple(t - b for t, b in zip(totals, before))
    out = np.full([n + t for n, t in zip(array.shape, totals)], value, dtype=array.dtype)
    out[tuple(slice(b, b + n) for b, n in zip(before, array.shape))] = array
    return out, Padding(before, after)  # type: ignore[arg-type]


def unpad(array: np.ndarray, padding: Padding) -> np.ndarray:
    """Remove ``padding`` (a view of ``array``)."""
    return array[tuple(slice(b, n - a) for b, a, n in zip(padding.before, padding.after, array.shape))]


def bounding_box(*masks: np.ndarray, margin: int = 0) -> tuple[slice, ...] | None:
    """Smallest box holding every non-zero voxel of the given masks (their union), grown by
    ``margin`` voxels on each side and clipped to the array; ``None`` when all are empty.

    The one bounding box of the package: kidney location, post-processing and the metrics' crops
    (every foreground voxel of either mask lies inside, so distances between them are unchanged).

    Raises:
        ValueError: no mask, or masks of different shapes.
    """
    if not masks:
        raise ValueError("bounding_box needs at least one mask")
    shape = masks[0].shape
    if any(m.shape != shape for m in masks):
        raise ValueError(f"masks have different shapes: {[m.shape for m in masks]}")
    box = []
    for axis in range(len(shape)):
        others = tuple(a for a in range(len(shape)) if a != axis)
        hit = np.zeros(shape[axis], dtype=bool)
        for m in masks:
            hit |= np.any(m, axis=others)
        idx = np.flatnonzero(hit)
        if idx.size == 0:
            return None
        box.append(slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, shape[axis])))
    return tuple(box)
