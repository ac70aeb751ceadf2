"""nnU-Net's preprocessed dataset as a case source: pretraining reads exactly the arrays nnU-Net
trains on (its spacing, its normalisation, its files and axis order), through nnU-Net's own dataset
classes (2.8 writes blosc2 ``.b2nd``; older folders ``.npz``/``.npy``).

Layout read (``nnUNet_preprocessed/DatasetXXX_NAME``)::

    PLANS.json                  the plans: configurations, transpose_forward
    dataset.json                the labels (which are kidney: :func:`kidneyssl.io.labels.policy_from_nnunet_labels`)
    splits_final.json           nnU-Net's folds (absent until nnU-Net first trains: the split it
                                will create is computed the way nnU-Net computes it)
    <data_identifier>/CASE.b2nd, CASE_seg.b2nd, CASE.pkl

What a case gives (the :class:`~kidneyssl.data.cache.CaseSource` interface):

- ``image``: channel 0 of nnU-Net's array, unchanged (no transposition, no flip: the encoder sees
  what nnU-Net's network will see); ``label``: the kidney target (uint8 0/1) of nnU-Net's
  segmentation (its ``-1`` outside the cropped body is background). Both are lazy
  :class:`LazyVolume` views: a crop reads only its box from disk.
- ``meta``: ``kidneys`` (centre, bbox, voxels per patient side) and ``split_x`` computed by the same
  functions as ``kidneyssl prepare`` (:func:`~kidneyssl.preprocessing.split_plane.find_split_x`,
  :func:`~kidneyssl.preprocessing.split_plane.locate_kidneys`), on a view whose lateral axis is
  the last and runs towards the patient's left, then mapped back to nnU-Net's axes; ``lateral``
  says which array axis is lateral and whether the patient's left has the larger index, read from
  the original geometry nnU-Net recorded (``sitk_stuff`` direction or ``nibabel_stuff`` affine)
  and the plans' ``transpose_forward``. ``split_x`` is an index along that axis
  (``left_is_high``: the patient-right half is below it; otherwise above). Computed on first
  use of a case and kept in memory.

The fold (:meth:`NnUNetPreprocessed.fold_cases`): training = the fold's training cases, validation
= its validation cases; pretraining reads training cases only, so nnU-Net's validation cases of
that fold are never read.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kidneyssl.data.cache import CachedCase
from kidneyssl.errors import DataError, KidneySSLError
from kidneyssl.io.labels import LabelPolicy, policy_from_nnunet_labels

__all__ = ["NnUNetPreprocessed", "LazyVolume", "is_nnunet_preprocessed", "open_nnunet_preprocessed",
           "lateral_axis", "NNUNET_SPLIT_SEED"]

log = logging.getLogger(__name__)

#: nnU-Net's seed and fold count for the split it creates when ``splits_final.json`` is absent.
NNUNET_SPLIT_SEED = 12345
NNUNET_FOLDS = 5


def is_nnunet_preprocessed(path: str | Path | None) -> bool:
    """Whether ``path`` is an nnU-Net preprocessed dataset folder (a ``dataset_fingerprint.json``
    or plans beside ``dataset.json``, and no kidneyssl ``cache.json``)."""
    if path is None:
        return False
    root = Path(path)
    if (root / "cache.json").is_file() or not (root / "dataset.json").is_file():
        return False
    return (root / "dataset_fingerprint.json").is_file() or any(root.glob("*Plans*.json"))


class LazyVolume:
    """A read-only ``(Z, Y, X)`` view of one channel of a ``(C, Z, Y, X)`` array (a blosc2
    ``NDArray`` or a numpy memory map), optionally mapped by ``transform`` after reading.

    Basic slicing (``view[a:b, c:d, e:f]``, with or without a leading ``...``) reads only that
    box; anything else, and ``np.asarray(view)``, reads the whole channel.
    """

    def __init__(self, array: Any, channel: int = 0, transform: Callable[[np.ndarray], np.ndarray] | None = None,
                 dtype: Any = None) -> None:
        self._array = array
        self._channel = int(channel)
        self._transform = transform
        z, y, x = (int(s) for s in array.shape[1:])
        self.shape = (z, y, x)
        self.ndim = 3
        self.dtype = np.dtype(dtype if dtype is not None else array.dtype)

    def _read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        out = np.asarray(self._array[(self._channel, *index)])
        out = self._transform(out) if self._transform is not None else out
        return out.astype(self.dtype, copy=False)

    def __getitem__(self, index: Any) -> np.ndarray:
        items = index if isinstance(index, tuple) else (index,)
        if items and items[0] is Ellipsis:
            items = items[1:]
        if len(items) <= 3 and all(isinstance(i, slice) and i.step in (None, 1) for i in items):
            full = tuple(items) + (slice(None),) * (3 - len(items))
            return self._read(full)
        return np.asarray(self)[index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self._read((slice(None), slice(None), slice(None)))
        return out if dtype is None else out.astype(dtype, copy=False)

    def __len__(self) -> int:
        return self.shape[0]


def lateral_axis(properties: dict[str, Any], transpose_forward: Sequence[int], path: str | Path = "properties"
                 ) -> tuple[int, bool]:
    """Which axis of nnU-Net's preprocessed array runs left-right, and whether the patient's left
    has the larger index.

    nnU-Net's SimpleITK reader stores the array as ITK's (z, y, x) (array axis ``k`` is ITK index
    axis ``2 - k``) with the ITK direction (columns: LPS directions of the index axes, +x = patient
    left); its nibabel readers transpose nibabel's voxel axes the same way, with a RAS affine
    (+x = patient right). The preprocessed array is that array transposed by ``transpose_forward``.

    Raises:
        DataError: no geometry recorded, or no array axis within 45 degrees of left-right.
    """
    if "sitk_stuff" in properties:
        direction = np.asarray(properties["sitk_stuff"]["direction"], dtype=np.float64).reshape(3, 3)
        toward_left = direction[0]  # LPS x component of ITK index axes 0, 1, 2
    elif "nibabel_stuff" in properties:
        stuff = properties["nibabel_stuff"]
        affine = np.asarray(stuff.get("reoriented_affine", stuff.get("original_affine")), dtype=np.float64)
        columns = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
        toward_left = -columns[0]  # RAS: +x is the patient's right
    else:
        raise DataError(path, "geometry", "sitk_stuff or nibabel_stuff (the original image's orientation)",
                        "neither", hint="preprocessed by an image reader kidneyssl does not know")
    per_axis = [float(toward_left[2 - int(t)]) for t in transpose_forward]
    axis = int(np.argmax(np.abs(per_axis)))
    if abs(per_axis[axis]) < np.sqrt(0.5):
        raise DataError(path, "geometry", "an array axis within 45 degrees of the patient's left-right",
                        f"left-right components {np.round(per_axis, 3).tolist()}")
    return axis, per_axis[axis] > 0


def _canonical_view(array: np.ndarray, axis: int, left_is_high: bool) -> np.ndarray:
    """``array`` with the lateral axis last and the patient's left at the high index (a view)."""
    view = np.moveaxis(array, axis, -1)
    return view if left_is_high else view[..., ::-1]


def _to_array_coords(zyx: Sequence[int], axis: int, left_is_high: bool, width: int) -> list[int]:
    """A voxel index of :func:`_canonical_view` back in the array's axes."""
    idx = [int(v) for v in zyx]
    if not left_is_high:
        idx[-1] = width - 1 - idx[-1]
    others = idx[:-1]
    return others[:axis] + [idx[-1]] + others[axis:]


def _bbox_to_array(bbox: Sequence[Sequence[int]], axis: int, left_is_high: bool, width: int) -> list[list[int]]:
    spans = [[int(a), int(b)] for a, b in bbox]
    lo, hi = spans[-1]
    if not left_is_high:
        spans[-1] = [width - hi, width - lo]
    return spans[:-1][:axis] + [spans[-1]] + spans[:-1][axis:]


class NnUNetPreprocessed:
    """One configuration of an nnU-Net preprocessed dataset, read as a case source.

    Args:
        root: ``nnUNet_preprocessed/DatasetXXX_NAME``.
        plans_file: the plans (default ``root/nnUNetPlans.json``).
        configuration: e.g. ``3d_fullres``.
        kidney_labels: labels forming the kidney target (default: those ``dataset.json`` names
            kidney, as for nnU-Net raw data).

    Raises:
        DataError: missing plans/configuration/data folder/``dataset.json``, or no label named kidney.
        MissingExtraError: nnU-Net is not installed.
    """

    def __init__(self, root: str | Path, plans_file: str | Path | None = None, configuration: str = "3d_fullres",
                 kidney_labels: tuple[int, ...] | None = None) -> None:
        from kidneyssl.models.nnunet import require_nnunet

        require_nnunet("reading nnU-Net's preprocessed data")
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        self.root = Path(root)
        self.plans_file = Path(plans_file) if plans_file is not None else self.root / "nnUNetPlans.json"
        try:
            plans = json.loads(self.plans_file.read_text())
        except (OSError, ValueError) as err:
            raise DataError(self.plans_file, "plans", "readable nnU-Net plans JSON", type(err).__name__) from None
        configs = plans.get("configurations", {})
        if configuration not in configs:
            raise DataError(self.plans_file, "configuration", f"one of {', '.join(sorted(configs))}",
                            repr(configuration))
        self.configuration = configuration
        config = dict(configs[configuration])
        while "data_identifier" not in config and config.get("inherits_from") in configs:
            config = {**configs[config["inherits_from"]], **{k: v for k, v in config.items() if k != "inherits_from"}}
        self.folder = self.root / str(config.get("data_identifier", f"{plans.get('plans_name')}_{configuration}"))
        if not self.folder.is_dir():
            raise DataError(self.folder, "preprocessed data", f"nnU-Net's preprocessed {configuration} cases",
                            "missing", hint=f"run nnU-Net's planning and preprocessing for {configuration}")
        self.transpose_forward = [int(t) for t in plans.get("transpose_forward", (0, 1, 2))]
        self.spacing_mm = tuple(float(s) for s in config.get("spacing", ()))
        dataset_json = self.root / "dataset.json"
        try:
            labels = json.loads(dataset_json.read_text())["labels"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(dataset_json, "labels", "a dataset.json with 'labels'", type(err).__name__) from None
        policy = policy_from_nnunet_labels(labels, dataset_json)
        self.labels: LabelPolicy = policy.with_kidney_labels(kidney_labels)
        self._dataset_class = infer_dataset_class(str(self.folder))
        self.case_ids: list[str] = sorted(self._dataset_class.get_identifiers(str(self.folder)))
        if not self.case_ids:
            raise DataError(self.folder, "cases", "nnU-Net preprocessed cases", "none")
        self._dataset = self._dataset_class(str(self.folder), self.case_ids)
        self._meta: dict[str, dict[str, Any]] = {}
        # nnU-Net's CT normalisation (clip to the foreground's 0.5/99.5 percentiles, z-score with its
        # mean and sd) in the form our intensity record has: what image-only methods need to tell
        # body from air and to map z-scores back to HU
        scheme = (config.get("normalization_schemes") or ["?"])[0]
        props = (plans.get("foreground_intensity_properties_per_channel") or {}).get("0") or {}
        self._intensity: dict[str, Any] | None = None
        if scheme == "CTNormalization" and {"mean", "std", "percentile_00_5", "percentile_99_5"} <= set(props):
            self._intensity = {"window_hu": [float(props["percentile_00_5"]), float(props["percentile_99_5"])],
                               "mean": float(props["mean"]), "std": float(props["std"])}
        self.normalization = str(scheme)

    def __len__(self) -> int:
        return len(self.case_ids)

    def __contains__(self, case_id: object) -> bool:
        return case_id in self.case_ids

    def __repr__(self) -> str:
        return f"NnUNetPreprocessed({self.folder}, {len(self)} cases, spacing_mm={self.spacing_mm})"

    def load(self, case_id: str, mmap: bool = True, label: bool = True) -> CachedCase:
        """Image and kidney-target views and the metadata of ``case_id`` (see the module doc);
        ``label=False``: the image alone, with the metadata that needs no label (its intensity
        record, for image-only methods)."""
        if case_id not in self.case_ids:
            raise KidneySSLError(f"{self.folder}: case {case_id!r} is not in nnU-Net's preprocessed data")
        data, seg, _, properties = self._dataset.load_case(case_id)
        image = LazyVolume(data, 0, dtype=np.float32)
        if not label:
            if self._intensity is None:
                raise KidneySSLError(f"{self.plans_file}: {self.configuration} uses {self.normalization}, not CT "
                                     "normalisation with foreground intensity statistics: image-only methods need "
                                     "them to find the body; use a kidneyssl cache instead")
            shape = [int(n) for n in image.shape]
            record = {**self._intensity, "padding": {"before": [0, 0, 0]}, "resampled_shape": shape}
            return CachedCase(case_id, image, None, {"case_id": case_id, "shape": shape, "has_label": True,  # type: ignore[arg-type]
                                                     "record": record, "source": {"nnunet_preprocessed": str(self.folder)}})
        target = self.labels.target
        mask = LazyVolume(seg, 0, transform=lambda s: target(s).astype(np.uint8), dtype=np.uint8)
        meta = self._meta.get(case_id)
        if meta is None:
            meta = self._meta[case_id] = self._case_meta(case_id, image, mask, properties)
        return CachedCase(case_id, image, mask, meta)  # type: ignore[arg-type]

    def _case_meta(self, case_id: str, image: LazyVolume, label: LazyVolume, properties: dict[str, Any]
                   ) -> dict[str, Any]:
        from kidneyssl.preprocessing.split_plane import find_split_x, locate_kidneys

        axis, left_is_high = lateral_axis(properties, self.transpose_forward, self.folder / f"{case_id}.pkl")
        mask = _canonical_view(np.asarray(label), axis, left_is_high)
        canonical_split = int(find_split_x(mask, _canonical_view(np.asarray(image), axis, left_is_high)))
        kidneys = locate_kidneys(mask, canonical_split)
        width = int(image.shape[axis])
        located = {}
        for side, loc in kidneys.items():
            located[side.value] = {
                "center": _to_array_coords(loc.center, axis, left_is_high, width),
                "bbox": _bbox_to_array(loc.bbox, axis, left_is_high, width),
                "voxels": int(loc.voxels)}
        return {
            "case_id": case_id, "shape": list(image.shape), "has_label": True,
            "split_x": canonical_split if left_is_high else width - canonical_split,
            "lateral": {"axis": axis, "left_is_high": bool(left_is_high)},
            "kidneys": located, "spacing_mm": list(self.spacing_mm), "labels": self.labels.to_dict(),
            "source": {"nnunet_preprocessed": str(self.folder), "plans": str(self.plans_file),
                       "configuration": self.configuration}}

    def fold_cases(self, fold: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(training, validation)`` case ids of nnU-Net's fold ``fold``: from
        ``splits_final.json``, or (absent) the split nnU-Net creates on its first training
        (5 folds, seed 12345, over the sorted case ids).

        Raises:
            DataError: an unreadable splits file, or no such fold.
        """
        path = self.root / "splits_final.json"
        if path.is_file():
            try:
                splits = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise DataError(path, "splits", "nnU-Net's splits JSON", type(err).__name__) from None
        else:
            from nnunetv2.utilities.crossval_split import generate_crossval_split

            splits = generate_crossval_split(self.case_ids, seed=NNUNET_SPLIT_SEED, n_splits=NNUNET_FOLDS)
            log.info("%s is absent: using the split nnU-Net creates (%d folds, seed %d)", path, NNUNET_FOLDS,
                     NNUNET_SPLIT_SEED)
        if not isinstance(splits, list) or not 0 <= fold < len(splits):
            raise DataError(path, "fold", f"a fold in 0..{len(splits) - 1 if isinstance(splits, list) else '?'}",
                            str(fold))
        train = tuple(sorted(str(c) for c in splits[fold]["train"]))
        val = tuple(sorted(str(c) for c in splits[fold]["val"]))
        unknown = sorted(set(train + val) - set(self.case_ids))
        if unknown:
            raise DataError(path, f"fold {fold}", "cases of the preprocessed folder", f"unknown {unknown[:5]}")
        return train, val


def open_nnunet_preprocessed(root: str | Path, plans: str | Path | None = None, configuration: str = "3d_fullres",
                             kidney_labels: tuple[int, ...] | None = None) -> NnUNetPreprocessed:
    """Open an nnU-Net preprocessed dataset (``plans``: a plans file, or an identifier such as
    ``nnUNetPlans`` inside ``root``; default ``nnUNetPlans``)."""
    from kidneyssl.models.nnunet import resolve_plans_path

    plans_file = resolve_plans_path(plans if plans is not None else "nnUNetPlans", root)
    return NnUNetPreprocessed(root, plans_file, configuration, kidney_labels)
