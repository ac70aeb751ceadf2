"""Segmentation training data: half volumes (the unit of training) and whole validation volumes.

The paper divides every CT volume into two halves along the sagittal plane, one kidney in each,
and trains the segmentation network on these halves. Here a half is the patient-right part
``x < split_x`` or the patient-left part ``x >= split_x`` of a cached, preprocessed case (the plane
``meta["split_x"]`` chosen at ``prepare`` time so that no kidney is cut, see
:func:`kidneyssl.preprocessing.sides.find_split_x`), zero-padded at the ends of its axes to a
multiple of 16 so the network's four downsamplings divide it. Each item carries what is needed to
put a prediction back on the full grid: ``split_x``, ``width``, ``overlap`` and ``pad``
(:func:`half_to_full`). Validation runs on whole volumes (:func:`iter_validation_cases`), stitched
from halves by the inference code, so its Dice is per case, not per half.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Side
from kidneyssl.preprocessing.sides import HalfPad, pad_to_multiple, split_halves, stitch_halves, unpad

__all__ = ["HalfVolumeDataset", "ValidationCase", "iter_validation_cases", "half_to_full"]


class HalfVolumeDataset:
    """One item per (case, side) half of the cached training cases (a ``torch.utils.data.Dataset``).

    Items (dict):
        ``image``: ``(1, Z, Y, Xh)`` float32 tensor, the half, zero-padded to ``pad_multiple``;
        ``label``: ``(1, Z, Y, Xh)`` float32 tensor, 1 where ``label > 0`` (kidney and tumour);
        ``case_id`` (str), ``side`` (``"left"``/``"right"``);
        ``split_x``, ``width`` (the full grid's X), ``overlap`` (ints), ``pad`` (``(pz, py, px)``
        zeros added at the ends, see :func:`kidneyssl.preprocessing.sides.pad_to_multiple`).

    Halves without a kidney (the empty side of a single-kidney case) are included: they are part
    of the volume the network must segment.

    Args:
        cache: object with ``load(case_id, mmap=True) -> CachedCase`` (``kidneyssl.data.cache``).
        case_ids: annotated cases (each must have a label in the cache).
        include_sides: which halves to serve.
        overlap: extra columns each half takes across the plane as context (0: exact halves).
        pad_multiple: each axis of a half is zero-padded to a multiple of this.

    Raises:
        KidneySSLError: a case has no label in the cache.
        ValueError: an unknown side name.
    """

    def __init__(self, cache: Any, case_ids: Sequence[str],
                 include_sides: Sequence[str | Side] = ("left", "right"), overlap: int = 0,
                 pad_multiple: int = 16) -> None:
        self.cache = cache
        self.case_ids = list(case_ids)
        sides = [Side(s) for s in include_sides]
        self.overlap = int(overlap)
        self.pad_multiple = int(pad_multiple)
        self.items: list[tuple[str, Side]] = []
        for cid in self.case_ids:
            if cache.load(cid, mmap=True).label is None:
                raise KidneySSLError(f"{cid}: no label in the cache; half volumes for training need one")
            # Right half first (it holds the smaller x), then left, in the order asked for.
            self.items.extend((cid, side) for side in (Side.RIGHT, Side.LEFT) if side in sides)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        case_id, side = self.items[index]
        case = self.cache.load(case_id, mmap=True)
        split_x = int(case.meta["split_x"])
        width = int(case.image.shape[-1])
        image = np.asarray(split_halves(case.image, split_x, self.overlap)[side], dtype=np.float32)
        label = (split_halves(case.label, split_x, self.overlap)[side] > 0).astype(np.float32)
        image, pad = pad_to_multiple(image, self.pad_multiple)
        label, _ = pad_to_multiple(label, self.pad_multiple)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)[None]),
            "label": torch.from_numpy(np.ascontiguousarray(label)[None]),
            "case_id": case_id,
            "side": side.value,
            "split_x": split_x,
            "width": width,
            "overlap": self.overlap,
            "pad": pad.after,
        }


def half_to_full(halves: Mapping[str | Side, np.ndarray], split_x: int, width: int, overlap: int,
                 pads: Mapping[str | Side, Sequence[int]]) -> np.ndarray:
    """Put per-half outputs (padded as served by :class:`HalfVolumeDataset`) back on the full grid.

    Args:
        halves: ``{side: (..., Z', Y', Xh') array}`` for both sides, e.g. network probabilities.
        split_x, width, overlap: as in the dataset item.
        pads: ``{side: (pz, py, px)}``, the item's ``pad``.

    Returns:
        ``(..., Z, Y, width)`` array, exactly the full grid.
    """
    unpadded = {Side(s): unpad(np.asarray(a), HalfPad(tuple(int(p) for p in pads[s])))  # type: ignore[arg-type]
                for s, a in halves.items()}
    return stitch_halves(unpadded, split_x, width, overlap)


@dataclass(frozen=True)
class ValidationCase:
    """A whole cached volume for stitched validation.

    Attributes:
        case_id: the case.
        image: ``(Z, Y, X)`` float32 preprocessed image (memory-mapped when the cache allows).
        label: ``(Z, Y, X)`` uint8 kidney mask (1 where the cached label is > 0).
        split_x: the case's lateral split plane (``x < split_x`` is the patient-right half).
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray
    split_x: int


def iter_validation_cases(cache: Any, case_ids: Sequence[str]) -> Iterator[ValidationCase]:
    """Yield whole volumes of ``case_ids`` in order, for per-case validation on the full grid.

    Raises:
        KidneySSLError: a case has no label in the cache.
    """
    for cid in case_ids:
        case = cache.load(cid, mmap=True)
        if case.label is None:
            raise KidneySSLError(f"{cid}: no label in the cache; validation needs one")
        yield ValidationCase(case_id=cid, image=case.image, label=(np.asarray(case.label) > 0).astype(np.uint8),
                             split_x=int(case.meta["split_x"]))
