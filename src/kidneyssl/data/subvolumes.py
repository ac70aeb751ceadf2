"""Random sub-volumes of cached images for the image-only pretraining methods (MAE, Models
Genesis): fixed-size crops drawn inside the body, each corrupted by the method (input, target,
loss weight). Only images are read: every case is loaded with ``label=False``.

Where crops are taken: crops of air teach nothing (there is nothing to restore), so a crop's centre
is drawn among the voxels *inside the body*. The preprocessed image is z-scored per volume after
clipping to the HU window, so the window's lower bound (-80 HU in the paper's window) is where air
and fat both end up; a voxel is "body" when its intensity is at least ``BODY_THRESHOLD`` of the
window above that bound (-42 HU for [-80, 300] HU: soft tissue, organs, vessels and bone, never air
or fat), computed from the case's own z-score statistics (its preprocessing record) and only
inside the unpadded volume (padding is z = 0, the volume's mean, which would otherwise pass). The
candidates are taken on a grid of ``crop_size // 16`` voxels per axis (16 candidate positions per
crop length), computed once per case on first use. The crop box is then moved inside the volume
where the volume is at least as large as the crop (it still holds the drawn centre); a smaller
axis is zero-padded on both sides, as preprocessing pads.

Determinism: item ``i`` of epoch ``e`` is drawn with ``numpy.random.default_rng([seed, e, i])``
(case, centre, then the method's corruption from the same generator), so the items of an epoch
are a pure function of (seed, epoch, index), identical on every rank and on resume. A fixed
validation set is the dataset of another seed whose epoch never changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from kidneyssl.data.cache import CaseSource
from kidneyssl.errors import KidneySSLError
from kidneyssl.preprocessing.crops import crop_padded
from kidneyssl.preprocessing.intensity import window_unit_to_zscore, zscore_to_window_unit

__all__ = ["BODY_THRESHOLD", "CropIntensity", "Corruption", "body_centres", "crop_start", "SubvolumeDataset"]

#: A voxel is inside the body when its window-unit intensity ``(HU - low) / (high - low)`` is at
#: least this (see the module docstring).
BODY_THRESHOLD = 0.1
#: Candidate crop centres per crop length along each axis.
CENTRES_PER_CROP = 16


@dataclass(frozen=True)
class CropIntensity:
    """How a crop's z-scores relate to HU: its volume's z-score statistics and the HU window.
    :meth:`to_unit` maps to the window's unit scale (low -> 0, high -> 1), :meth:`from_unit` back."""

    mean: float
    std: float
    window_hu: tuple[float, float]

    def to_unit(self, array: np.ndarray) -> np.ndarray:
        return zscore_to_window_unit(array, self.mean, self.std, self.window_hu)

    def from_unit(self, array: np.ndarray) -> np.ndarray:
        return window_unit_to_zscore(array, self.mean, self.std, self.window_hu)


#: ``(crop (Z, Y, X) float32 z-scores, generator, its intensity) -> (input, target, loss weight)``,
#: each a (Z, Y, X) float32 array: what a restoration method does to a crop.
Corruption = Callable[[np.ndarray, np.random.Generator, CropIntensity], "tuple[np.ndarray, np.ndarray, np.ndarray]"]


def body_centres(image: np.ndarray, intensity: CropIntensity, inner: Sequence[slice],
                 step: Sequence[int]) -> np.ndarray:
    """Candidate crop centres: (N, 3) int32 voxel indices on a grid of ``step`` inside ``inner``
    (the unpadded volume) whose intensity is inside the body (``BODY_THRESHOLD``); every grid
    point of ``inner`` when none is (a scan without body is still usable, if uselessly)."""
    grid = tuple(slice(s.start, s.stop, int(k)) for s, k in zip(inner, step))
    sampled = np.asarray(image[grid], dtype=np.float32)
    body = intensity.to_unit(sampled) >= BODY_THRESHOLD
    if not body.any():
        body = np.ones_like(body)
    index = np.argwhere(body)
    origin = np.array([s.start for s in inner])
    return (index * np.asarray(step) + origin).astype(np.int32)


def crop_start(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int]:
    """The start of a ``size`` box around ``centre``, moved inside an array of ``shape`` where it
    fits (it still holds ``centre``) and centred on the axis where it does not."""
    out = []
    for c, s, n in zip(centre, size, shape):
        c, s, n = int(c), int(s), int(n)
        out.append(min(max(c - s // 2, 0), n - s) if n >= s else -((s - n) // 2))
    return out[0], out[1], out[2]


class SubvolumeDataset:
    """``n_samples`` corrupted crops per epoch from the images of ``case_ids`` (a map-style dataset).

    Each item is a dict of ``(1, *crop_size)`` float32 tensors ``input``, ``target``, ``weight``
    (the loss weight of each voxel) and ``id`` (``case:z,y,x`` of the crop's start).

    Args:
        source: the cache(s) to read (:class:`~kidneyssl.data.cache.CaseSource`); images only.
        case_ids: the cases drawn from (uniformly: every image alike).
        n_samples: crops per epoch.
        seed: item ``i`` of epoch ``e`` uses ``default_rng([seed, e, i])``.
        crop_size: (z, y, x) voxels.
        corrupt: the method's :data:`Corruption`.

    Raises:
        KidneySSLError: no case given.
    """

    def __init__(self, source: CaseSource, case_ids: Sequence[str], n_samples: int, seed: int,
                 crop_size: Sequence[int], corrupt: Corruption, epoch: int = 0) -> None:
        if not case_ids:
            raise KidneySSLError("no images to draw sub-volumes from")
        self.source = source
        self.case_ids = list(case_ids)
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.crop_size = tuple(int(c) for c in crop_size)
        self.corrupt = corrupt
        self.step = tuple(max(1, c // CENTRES_PER_CROP) for c in self.crop_size)
        self.epoch = int(epoch)
        self._cases: dict[str, tuple[np.ndarray, CropIntensity]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n_samples

    def _case(self, case_id: str) -> tuple[Any, np.ndarray, CropIntensity]:
        case = self.source.load(case_id, mmap=True, label=False)
        if case_id not in self._cases:
            record = case.meta["record"]
            window = (float(record["window_hu"][0]), float(record["window_hu"][1]))
            intensity = CropIntensity(float(record["mean"]), float(record["std"]), window)
            before = record["padding"]["before"]
            inner = [slice(int(b), int(b) + int(n)) for b, n in zip(before, record["resampled_shape"])]
            self._cases[case_id] = (body_centres(case.image, intensity, inner, self.step), intensity)
        centres, intensity = self._cases[case_id]
        return case, centres, intensity

    def index_cases(self) -> None:
        """Find the candidate centres of every case now (reading each image once), e.g. before
        reader processes start, so that they inherit them instead of each finding them again."""
        for case_id in self.case_ids:
            self._case(case_id)

    def draw(self, index: int) -> tuple[str, tuple[int, int, int], np.ndarray, CropIntensity, np.random.Generator]:
        """The crop of item ``index`` (case id, start, z-scored crop, its intensity) and the
        generator the corruption continues with."""
        if not 0 <= index < self.n_samples:
            raise IndexError(f"item {index} of {self.n_samples}")
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        case_id = self.case_ids[int(rng.integers(len(self.case_ids)))]
        case, centres, intensity = self._case(case_id)
        centre = centres[int(rng.integers(len(centres)))]
        start = crop_start(centre, self.crop_size, case.image.shape)
        crop = crop_padded(case.image, start, self.crop_size).astype(np.float32, copy=False)
        return case_id, start, crop, intensity, rng

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        case_id, start, crop, intensity, rng = self.draw(index)
        image, target, weight = self.corrupt(crop, rng, intensity)
        return {"input": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)[None]),
                "target": torch.from_numpy(np.ascontiguousarray(target, dtype=np.float32)[None]),
                "weight": torch.from_numpy(np.ascontiguousarray(weight, dtype=np.float32)[None]),
                "id": f"{case_id}:{','.join(str(s) for s in start)}"}
