"""Segmentation training data: half volumes, the unit of training.

The paper divides every CT volume into two halves along the sagittal plane, one kidney in each,
and trains the segmentation network on these halves. A half here is exactly what inference feeds
the network (:func:`kidneyssl.preprocessing.halves.half_bounds`, the one definition of a half): the
patient-right part ``x < split_x`` or the patient-left part ``x >= split_x`` of a cached,
preprocessed case, with ``context`` columns of real image across the plane, widened with more real
image to a multiple of 16 (the cache is padded to a multiple of 16, so no half needs padding).

Training may use the label: its plane is the cached ``meta["split_x"]``, chosen at ``prepare`` time
so that no kidney is cut (:func:`kidneyssl.preprocessing.split_plane.find_split_x` with the mask).
Nothing that scores a model reads that plane or the label: validation, Table 1 and ``predict``
all go through :func:`kidneyssl.inference.segment.segment_image`, which finds its plane from the
image alone.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from kidneyssl.data.cache import CaseSource
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.halves import split_halves

__all__ = ["HalfVolumeDataset", "CroppedHalves", "foreground_fraction"]


class HalfVolumeDataset:
    """One item per (case, side) half of the cached training cases (a ``torch.utils.data.Dataset``).

    Items (dict):
        ``image``: ``(1, Z, Y, Xh)`` float32 tensor, the half (with its context);
        ``label``: ``(1, Z, Y, Xh)`` float32 tensor, 1 where ``label > 0`` (kidney and tumour);
        ``case_id`` (str), ``side`` (``"left"``/``"right"``), ``split_x``, ``width`` (the full
        grid's X), ``context`` (ints).

    Halves without a kidney (the empty side of a single-kidney case) are included: they are part
    of the volume the network must segment.

    Args:
        cache: object with ``load(case_id, mmap=True) -> CachedCase`` (``kidneyssl.data.cache``).
        case_ids: annotated cases (each must have a label in the cache).
        include_sides: which halves to serve.
        context: voxels of image context each half takes across the plane.
        multiple: half widths are a multiple of this (the network needs 16).

    Raises:
        KidneySSLError: a case has no label in the cache, or its grid is not a multiple of
            ``multiple`` (a cache prepared with a smaller ``pad_multiple``).
        ValueError: an unknown side name.
    """

    def __init__(self, cache: CaseSource, case_ids: Sequence[str],
                 include_sides: Sequence[str | Side] = ("left", "right"), context: int = 0,
                 multiple: int = 16) -> None:
        self.cache = cache
        self.case_ids = list(case_ids)
        sides = [Side(s) for s in include_sides]
        self.context = int(context)
        self.multiple = int(multiple)
        self.items: list[tuple[str, Side]] = []
        for cid in self.case_ids:
            case = cache.load(cid, mmap=True)
            if case.label is None:
                raise KidneySSLError(f"{cid}: no label in the cache; half volumes for training need one")
            if any(int(n) % self.multiple for n in case.image.shape):
                raise KidneySSLError(f"{cid}: cached grid {tuple(case.image.shape)} is not a multiple of "
                                     f"{self.multiple}; prepare the cache with pad_multiple {self.multiple}")
            # Right half first (it holds the smaller x), then left, in the order asked for.
            self.items.extend((cid, side) for side in (Side.RIGHT, Side.LEFT) if side in sides)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        case_id, side = self.items[index]
        case = self.cache.load(case_id, mmap=True)
        split_x = int(case.meta["split_x"])
        if case.label is None:
            raise KidneySSLError(f"{case_id}: the cache holds no label for this case (an unannotated case "
                                 "cannot be a segmentation training case)")
        # Writable and contiguous: the cache is memory-mapped read-only, and a tensor viewing it would
        # crash on the first in-place write downstream (copied only when the half is such a view).
        image = np.require(split_halves(case.image, split_x, self.context, self.multiple)[side],
                           dtype=np.float32, requirements=("C", "W"))
        label = (split_halves(case.label, split_x, self.context, self.multiple)[side] > 0).astype(np.float32)
        return {
            "image": torch.from_numpy(image[None]),
            "label": torch.from_numpy(np.ascontiguousarray(label)[None]),
            "case_id": case_id,
            "side": side.value,
            "split_x": split_x,
            "width": int(case.image.shape[-1]),
            "context": self.context,
        }


def foreground_fraction(dataset: HalfVolumeDataset) -> float:
    """Fraction of kidney voxels (``label > 0``) over every half volume the dataset serves,
    counted from the memory-mapped labels without building the items."""
    fg = total = 0
    for case_id, side in dataset.items:
        case = dataset.cache.load(case_id, mmap=True)
        if case.label is None:
            raise KidneySSLError(f"{case_id}: the cache holds no label for this case")
        half = split_halves(case.label, int(case.meta["split_x"]), dataset.context, dataset.multiple)[side]
        fg += int(np.count_nonzero(np.asarray(half)))
        total += int(half.size)
    return fg / total if total else 0.0


class CroppedHalves:
    """Fixed-size random crops of half volumes (a ``torch.utils.data.Dataset``), for training on
    less than a whole half per step.

    The crop of item ``i`` in epoch ``e`` is drawn from ``np.random.default_rng([seed, e, i])``:
    the same on every rank, every worker process and after a resume. With probability
    ``foreground`` it is centred on a kidney voxel of the half (nnU-Net's foreground
    oversampling: a crop drawn uniformly from a half misses the kidney most of the time), else
    anywhere in the half. Crops reaching past the half are zero-padded (the image's padding
    value). Items are those of :class:`HalfVolumeDataset` with ``image`` and ``label`` cropped and
    ``crop_start`` added.

    Args:
        halves: the half volumes.
        crop_size: (z, y, x) voxels, multiples of the network's size multiple.
        seed: the run's seed.
        foreground: probability of a crop centred on a kidney voxel (when the half has one).
    """

    def __init__(self, halves: HalfVolumeDataset, crop_size: Sequence[int], seed: int,
                 foreground: float = 0.5) -> None:
        if len(crop_size) != 3 or any(int(c) < 1 for c in crop_size):
            raise ValueError(f"crop_size must be 3 positive sizes, got {crop_size!r}")
        if not 0.0 <= foreground <= 1.0:
            raise ValueError(f"foreground must be in [0, 1], got {foreground}")
        self.halves = halves
        self.crop_size = tuple(int(c) for c in crop_size)
        self.seed = int(seed)
        self.foreground = float(foreground)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.halves)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        from kidneyssl.preprocessing.crops import crop_padded

        item = self.halves[index]
        image, label = item["image"][0].numpy(), item["label"][0].numpy()
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        shape = image.shape
        want_fg = rng.random() < self.foreground
        kidney = np.flatnonzero(label > 0) if want_fg else np.empty(0, dtype=np.int64)
        if kidney.size:
            center = [int(c) for c in np.unravel_index(int(kidney[rng.integers(kidney.size)]), shape)]
        else:
            center = [int(rng.integers(n)) for n in shape]
        # the crop around the centre, shifted inside the half where the half is large enough
        start = [min(max(int(c) - s // 2, 0), max(n - s, 0)) for c, s, n in zip(center, self.crop_size, shape)]
        crops = [np.ascontiguousarray(crop_padded(a, start, self.crop_size))[None] for a in (image, label)]
        return {**item, "image": torch.from_numpy(crops[0]), "label": torch.from_numpy(crops[1]),
                "crop_start": tuple(start)}
