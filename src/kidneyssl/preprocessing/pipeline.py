"""The paper's preprocessing (section 3.2) with an exact inverse for predictions.

``preprocess_image``: canonical reorientation -> resample to ``cfg.spacing_mm`` -> clip to
``cfg.window_hu`` -> z-score (mean/std of the windowed, resampled volume, before padding) ->
zero-pad to a multiple of ``cfg.pad_multiple`` (symmetric: ``total // 2`` before, rest after).

Order of operations: resampling comes before windowing, as in the paper. Clipping first would
not be equivalent (linear interpolation of clipped values differs from clipping interpolated
values near the window edges), and it would not be cheaper here: the window is applied to the
~10x smaller resampled array.

Reorientation is a permutation and flips, and our resampling grid (fixed field of view, see
:mod:`kidneyssl.preprocessing.spatial`) is symmetric under flips, so resampling in the file's own
axis order and then reorienting the small result is exactly the same as reorienting first, and
saves a full-resolution copy. :class:`PreprocessRecord` keeps everything needed to map an array
on the preprocessed grid back onto the original file's grid (:meth:`PreprocessRecord.restore`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from nibabel import orientations as nio

from kidneyssl.config import PreprocessConfig
from kidneyssl.io.geometry import (
    Geometry,
    Reorientation,
    Volume,
    from_canonical,
    ornt_to_canonical,
)
from kidneyssl.io.labels import LabelPolicy
from kidneyssl.io.plausibility import check_resampled_size
from kidneyssl.preprocessing.intensity import clip_window, zscore
from kidneyssl.preprocessing.spatial import (
    Padding,
    pad_to_multiple,
    resample_to_shape,
    resampled_affine,
    resampled_shape,
    unpad,
)
from kidneyssl.types import Shape3, Spacing3, shape3, spacing3

__all__ = ["PreprocessRecord", "preprocess_image", "preprocess_label", "RECORD_VERSION"]

RECORD_VERSION = 1


@dataclass(frozen=True)
class PreprocessRecord:
    """How one volume was preprocessed, and how to undo it.

    Attributes:
        original: geometry of the input file (shape and RAS+ affine as stored).
        ornt: nibabel orientation transform from the original axes to canonical (I, P, L).
        resampled_shape: canonical shape after resampling, before padding.
        padding: zero padding added after normalisation.
        spacing_mm: actual spacing (z, y, x) of the preprocessed grid (within half a voxel over
            the field of view of ``target_spacing_mm``).
        target_spacing_mm: the configured spacing.
        window_hu: the intensity window applied.
        mean, std: z-score statistics (HU, of the windowed resampled volume).
        interpolation: image interpolation order used.
    """

    original: Geometry
    ornt: np.ndarray
    resampled_shape: Shape3
    padding: Padding
    spacing_mm: Spacing3
    target_spacing_mm: Spacing3
    window_hu: tuple[float, float]
    mean: float
    std: float
    interpolation: str = "linear"

    @property
    def shape(self) -> Shape3:
        """Shape (Z, Y, X) of the preprocessed, padded array."""
        return tuple(n + b + a for n, b, a in zip(  # type: ignore[return-value]
            self.resampled_shape, self.padding.before, self.padding.after))

    @property
    def _resampled_original_layout(self) -> Reorientation:
        """Reorientation record of the resampled grid in the file's own axis order."""
        layout_shape = tuple(self.resampled_shape[int(self.ornt[i, 0])] for i in range(3))
        affine = resampled_affine(self.original.affine, self.original.shape, layout_shape)
        return Reorientation(Geometry(affine, layout_shape), self.ornt)  # type: ignore[arg-type]

    @property
    def geometry(self) -> Geometry:
        """Geometry of the preprocessed, padded grid (canonical axes, RAS+ affine)."""
        canonical = self._resampled_original_layout.canonical_geometry
        shift = np.eye(4)
        shift[:3, 3] = -np.asarray(self.padding.before, dtype=np.float64)
        return Geometry(canonical.affine @ shift, self.shape)

    def restore(self, array: np.ndarray, order: str = "linear",
                threshold: float | None = None) -> np.ndarray:
        """Map ``array`` from the preprocessed grid back to the original file's layout and shape.

        Un-pads, un-reorients, then resamples to ``original.shape``; the result lies exactly on
        ``original`` (``write_mask(result, path, like=record.original)``).

        Args:
            array: (Z, Y, X) array of shape :attr:`shape`: a label mask (bool/integer dtype:
                resampled per label with ``linear`` = linear interpolation + arg-max / 0.5
                threshold, or ``nearest``) or a float map such as probabilities (trilinear or
                nearest; returned as float32).
            order: ``linear`` or ``nearest``.
            threshold: float maps only: return the uint8 mask ``restored >= threshold``,
                computed chunk-wise (no full-resolution float32 array). Thresholding restored
                probabilities is more faithful than restoring a thresholded coarse mask: at
                3.22 x 1.62 x 1.62 mm a binary kidney mask comes back with Dice ~0.98, a soft one
                with > 0.99 (tests on KiTS19 masks).

        Returns:
            uint8 labels / mask or float32 values, shape ``original.shape``.
        """
        if tuple(array.shape) != self.shape:
            raise ValueError(f"array shape {array.shape} is not the preprocessed shape {self.shape}")
        if order not in ("linear", "nearest"):
            raise ValueError(f"order must be 'linear' or 'nearest', got {order!r}")
        is_label = array.dtype == bool or np.issubdtype(array.dtype, np.integer)
        inner = np.ascontiguousarray(unpad(array, self.padding))
        layout = from_canonical(inner, self._resampled_original_layout)
        if is_label and threshold is not None:
            raise ValueError("threshold applies to float maps (probabilities), not label masks")
        out = resample_to_shape(layout, self.original.shape, order=order, is_label=is_label,
                                threshold=threshold)
        return np.ascontiguousarray(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (see :meth:`from_dict`)."""
        return {
            "version": RECORD_VERSION,
            "original": self.original.to_dict(),
            "ornt": self.ornt.tolist(),
            "resampled_shape": list(self.resampled_shape),
            "padding": self.padding.to_dict(),
            "spacing_mm": list(self.spacing_mm),
            "target_spacing_mm": list(self.target_spacing_mm),
            "window_hu": list(self.window_hu),
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PreprocessRecord":
        if data.get("version") != RECORD_VERSION:
            raise ValueError(f"unsupported preprocess record version {data.get('version')!r} "
                             f"(this kidneyssl writes {RECORD_VERSION})")
        return cls(
            original=Geometry.from_dict(data["original"]),
            ornt=np.asarray(data["ornt"], dtype=np.float64),
            resampled_shape=shape3(data["resampled_shape"]),
            padding=Padding.from_dict(data["padding"]),
            spacing_mm=spacing3(data["spacing_mm"]),
            target_spacing_mm=spacing3(data["target_spacing_mm"]),
            window_hu=(float(data["window_hu"][0]), float(data["window_hu"][1])),
            mean=float(data["mean"]),
            std=float(data["std"]),
            interpolation=str(data.get("interpolation", "linear")),
        )


def _resample_in_file_layout(array: np.ndarray, geometry: Geometry, ornt: np.ndarray,
                             cfg: PreprocessConfig, order: str, is_label: bool,
                             threads: int | None,
                             antialias: bool = False) -> tuple[np.ndarray, Reorientation]:
    """Resample in the file's axis order to the canonical target spacing, then reorient."""
    target = [cfg.spacing_mm[int(ornt[i, 0])] for i in range(3)]
    layout_shape = resampled_shape(geometry.shape, geometry.spacing, target)
    check_resampled_size(geometry.shape, geometry.spacing, layout_shape)  # before allocating
    out = resample_to_shape(array, layout_shape, order=order, is_label=is_label, threads=threads,
                            antialias=antialias)
    layout = Geometry(resampled_affine(geometry.affine, geometry.shape, layout_shape), layout_shape)
    record = Reorientation(layout, ornt)
    if not record.is_identity:
        out = nio.apply_orientation(out, ornt)
    return np.ascontiguousarray(out), record


def preprocess_image(volume: Volume, cfg: PreprocessConfig,
                     threads: int | None = None) -> tuple[np.ndarray, PreprocessRecord]:
    """Preprocess a CT volume as in the paper.

    Args:
        volume: CT in Hounsfield units, any orientation, spacing and dtype.
        cfg: target spacing (z, y, x mm, canonical), HU window, pad multiple, interpolation.
        threads: resampling threads (default: available cores, at most 4).

    Returns:
        (float32 array (Z, Y, X) in canonical (I, P, L) orientation, z-scored, zero-padded to a
        multiple of ``cfg.pad_multiple``; the :class:`PreprocessRecord`).
    """
    ornt = ornt_to_canonical(volume.geometry.affine)
    array, reo = _resample_in_file_layout(volume.array, volume.geometry, ornt, cfg,
                                          cfg.image_interpolation, False, threads)
    clip_window(array, cfg.window_hu, out=array)
    array, mean, std = zscore(array, out=array)
    padded, padding = pad_to_multiple(array, cfg.pad_multiple, value=0.0)
    record = PreprocessRecord(
        original=volume.geometry,
        ornt=ornt,
        resampled_shape=shape3(array.shape),
        padding=padding,
        spacing_mm=reo.canonical_geometry.spacing,
        target_spacing_mm=spacing3(cfg.spacing_mm),
        window_hu=(float(cfg.window_hu[0]), float(cfg.window_hu[1])),
        mean=mean,
        std=std,
        interpolation=cfg.image_interpolation,
    )
    return padded, record


def preprocess_label(label_volume: Volume, record: PreprocessRecord, cfg: PreprocessConfig,
                     order: str = "linear", threads: int | None = None,
                     soft: bool = False, policy: LabelPolicy | None = None) -> np.ndarray:
    """Put a label map on the grid of ``record`` (the image's preprocessed grid).

    Kidney target: labels in ``policy.kidney`` -> 1 (default, ``policy=None``: ``label > 0``);
    with ``cfg.keep_tumor``, 0 background / 1 kidney / 2 tumour (``policy.tumor``); resampled
    without inventing label values (linear + 0.5 threshold / per-label arg-max, or nearest),
    reoriented and zero-padded like the image.

    With ``soft=True`` (binary kidney target only) the result is instead the float32 fraction of
    each voxel covered by kidney (anti-aliased linear resampling, no threshold).

    Returns:
        uint8 array (float32 with ``soft``) of shape ``record.shape``.

    Raises:
        ValueError: the label's geometry differs from the image's (``record.original``).
    """
    if not label_volume.geometry.same_as(record.original):
        raise ValueError(f"label geometry {label_volume.geometry!r} differs from the image's "
                         f"{record.original!r}")
    array = label_volume.array
    if not cfg.keep_tumor:
        array = array > 0 if policy is None else policy.target(array)
    elif policy is not None and not soft:
        array = policy.kidney_tumor_target(array)
    elif soft:
        raise ValueError("soft labels are for the binary kidney target (keep_tumor=False)")
    out, _ = _resample_in_file_layout(array, label_volume.geometry, record.ornt, cfg, order,
                                      not soft, threads, antialias=soft)
    if tuple(out.shape) != tuple(record.resampled_shape):
        raise ValueError(f"label grid {out.shape} differs from the image grid "
                         f"{record.resampled_shape}: was the record made with another config?")
    padded = np.zeros(record.shape, dtype=np.float32 if soft else np.uint8)
    padded[tuple(slice(b, b + n) for b, n in zip(record.padding.before, out.shape))] = out
    return padded
