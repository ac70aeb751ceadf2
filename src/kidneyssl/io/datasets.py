"""One home for dataset discovery: KiTS19, KiTS21/KiTS23, nnU-Net raw and plain image/label pairs.

Formats (``--format``; ``auto`` detects them in this order):

- ``nnunet``: ``dataset.json`` + ``imagesTr/NAME_0000.nii.gz`` + ``labelsTr/NAME.nii.gz`` (and
  unannotated ``imagesTs/NAME_0000.nii.gz``); the kidney labels are read from the label names of
  ``dataset.json`` (:func:`~kidneyssl.io.labels.policy_from_nnunet_labels`). Only channel 0 (CT)
  is used.
- ``kits23``: KiTS21/KiTS23 case folders ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``
  (KiTS21: ``aggregated_MAJ_seg.nii.gz``); labels 0-3, kidney = 1, 2, 3. Detected by a
  ``kits.json``/``kits23.json`` beside the cases, ``instances/`` folders or KiTS21 file names;
  otherwise case folders are read as ``kits19``.
- ``kits19``: ``case_XXXXX/imaging.nii.gz`` + ``segmentation.nii.gz``; labels 0-2, kidney = 1, 2.
- ``pairs``: ``images/NAME.nii.gz`` + ``labels/NAME.nii.gz`` (also ``imagesTr``/``masks``/
  ``segmentations`` ...), or a flat folder of ``NAME.nii.gz`` + ``NAME_seg.nii.gz`` (``_label``,
  ``_mask``, ``_segmentation``); labels as KiTS19 unless ``kidney_labels`` says otherwise.

:func:`open_dataset` returns a :class:`Dataset`: the :class:`~kidneyssl.io.kits19.Case` list, the
:class:`~kidneyssl.io.labels.LabelPolicy` and what was skipped (and why), e.g. ``case_1/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from kidneyssl.errors import DataError
from kidneyssl.io.kits19 import IMAGING_NAME, SEGMENTATION_NAME, Case
from kidneyssl.io.labels import (
    KITS19_POLICY,
    KITS23_POLICY,
    LabelPolicy,
    check_nnunet_labels,
    policy_from_nnunet_labels,
)
from kidneyssl.io.paths import describe_folder

__all__ = ["FORMATS", "Dataset", "detect_format", "open_dataset", "default_policy", "check_disjoint_cases",
           "file_sha256"]

log = logging.getLogger(__name__)

#: Dataset formats, in the order ``auto`` tries them.
FORMATS = ("nnunet", "kits23", "kits19", "pairs")
_CASE_RE = re.compile(r"^case_\d{5}$")
_CASE_LIKE = re.compile(r"^case[_-]?\d+$", re.IGNORECASE)
_NIFTI = (".nii.gz", ".nii")
_KITS21_SEG = "aggregated_MAJ_seg.nii.gz"
_KITS23_MARKERS = ("kits.json", "kits23.json", "kits21.json")
_IMAGE_DIRS = ("images", "imagesTr", "image", "imaging", "scans", "ct", "img")
_LABEL_DIRS = ("labels", "labelsTr", "label", "masks", "mask", "segmentations", "segmentation", "seg", "gt")
_LABEL_SUFFIXES = ("_segmentation", "_seg", "_labels", "_label", "_mask", "_gt")


@dataclass
class Dataset:
    """A discovered dataset.

    Attributes:
        root: the dataset folder (absolute).
        format: one of :data:`FORMATS`.
        cases: cases sorted by id (images without labels are unannotated cases).
        policy: which label values are allowed and which form the kidney target.
        skipped: what discovery left out and why (one line each, absolute paths).
    """

    root: Path
    format: str
    cases: list[Case]
    policy: LabelPolicy
    skipped: list[str] = field(default_factory=list)


def _stem(path: Path) -> str:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _present(path: Path) -> bool:
    """A file, or a broken symbolic link (kept, so that reading it says so, never skipped)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def _niftis(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if _present(p) and p.name.endswith(_NIFTI) and not p.name.startswith("."))


def _case_dirs(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and _CASE_RE.match(d.name))


def _file(folder: Path, *names: str) -> Path | None:
    for name in names:
        for candidate in (folder / name, folder / name[: -len(".gz")]):
            if name.endswith(".gz") and _present(candidate):
                return candidate
    return None


def _one_per_name(files: list[tuple[str, Path]], folder: Path, what: str) -> dict[str, Path]:
    """``{name: file}``, refusing two files for one name (``x.nii`` and ``x.nii.gz``, ``a_seg`` and
    ``a_mask``): which one is meant would be a guess."""
    found: dict[str, Path] = {}
    for name, path in files:
        if name in found:
            raise DataError(folder, what, f"one {what[:-1]} file per case",
                            f"{found[name].name} and {path.name} for {name}", hint="remove or rename one")
        found[name] = path
    return found


#: Segmentations read to tell KiTS23 from KiTS19 when case folders carry no marker.
_DETECT_SAMPLE = 5


def _kits_from_labels(root: Path, cases: list[Path]) -> str:
    """``kits23`` when a sampled segmentation holds label 3 (cyst), else ``kits19``; says which."""
    import numpy as np

    from kidneyssl.io.volumes import read_volume

    segs = [p for d in cases if (p := _file(d, SEGMENTATION_NAME)) is not None and p.is_file()]
    step = max(1, len(segs) // _DETECT_SAMPLE)
    sampled = segs[::step][:_DETECT_SAMPLE]
    for seg in sampled:
        try:
            labels = read_volume(seg, check_nan=False).array
        except DataError:  # a bad file: check/prepare report it
            continue
        if bool(np.any(labels == 3)):
            log.info("%s: case folders without a KiTS21/KiTS23 marker; label 3 (cyst) in %s: read as KiTS23 "
                     "(kidney = 1, 2, 3)", root, seg)
            return "kits23"
    log.info("%s: case folders without a KiTS21/KiTS23 marker and no label 3 in %d sampled segmentation(s): "
             "read as KiTS19 (kidney = 1, 2)", root, len(sampled))
    return "kits19"


def _pair_dirs(root: Path) -> tuple[Path, Path] | None:
    images = next((root / n for n in _IMAGE_DIRS if (root / n).is_dir()), None)
    labels = next((root / n for n in _LABEL_DIRS if (root / n).is_dir()), None)
    return (images, labels) if images is not None and labels is not None else None


def detect_format(root: str | Path) -> str:
    """The format of the dataset in ``root`` (see the module docstring).

    Case folders without a KiTS21/KiTS23 marker are told apart by their labels: KiTS23 when one
    of a few sampled segmentations (up to 5, spread over the cases) holds label 3 (cyst), else
    KiTS19; the choice is logged. (A later case with label 3 then fails saying to read the
    dataset as KiTS23.)

    Raises:
        DataError: ``root`` is not a folder, or holds none of the formats.
    """
    root = Path(root).absolute()
    if not root.is_dir():
        raise DataError(root, "dataset", "a folder of case_XXXXX folders", "no such folder")
    if (root / "dataset.json").is_file() and (root / "imagesTr").is_dir():
        return "nnunet"
    cases = _case_dirs(root)
    if cases:
        if any((root / m).is_file() for m in _KITS23_MARKERS):
            return "kits23"
        for d in cases[:20]:
            if (d / "instances").is_dir() or (d / _KITS21_SEG).is_file():
                return "kits23"
        return _kits_from_labels(root, cases)
    if _pair_dirs(root) is not None or _niftis(root):
        return "pairs"
    raise DataError(root, "dataset", "case_XXXXX folders (KiTS19/KiTS23), an nnU-Net folder "
                    "(dataset.json, imagesTr/, labelsTr/) or image/label pairs",
                    "none", hint=describe_folder(root))


def default_policy(data_format: str) -> LabelPolicy:
    """The label policy of a format without ``dataset.json`` (``nnunet`` reads it per dataset)."""
    return KITS23_POLICY if data_format == "kits23" else KITS19_POLICY


def _kits_cases(root: Path, kits23: bool) -> tuple[list[Case], list[str]]:
    cases, skipped = [], []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        if _CASE_RE.match(entry.name):
            seg_names = (SEGMENTATION_NAME, _KITS21_SEG) if kits23 else (SEGMENTATION_NAME,)
            cases.append(Case(entry.name, _file(entry, IMAGING_NAME), _file(entry, *seg_names),
                              entry / IMAGING_NAME))
        elif _CASE_LIKE.match(entry.name):
            skipped.append(f"{entry}: skipped: a case folder name must be case_ and 5 digits "
                           "(e.g. case_00001)")
        elif any(p.name.endswith(_NIFTI) for p in entry.iterdir() if p.is_file()):
            skipped.append(f"{entry}: skipped: holds NIfTI files but is not a case_XXXXX folder")
    return cases, skipped


def _nnunet_policy(labels: dict, path: Path, kidney_labels: tuple[int, ...] | None) -> LabelPolicy:
    try:
        return policy_from_nnunet_labels(labels, path)
    except DataError:
        if kidney_labels is None:
            raise
    values = {int(v) for v in labels.values() if isinstance(v, (int, str)) and str(v).isdigit()}
    values |= {int(k) for k in labels if str(k).isdigit()}
    values |= {int(x) for v in labels.values() if isinstance(v, list) for x in v}
    return LabelPolicy(kidney_labels, None, tuple(sorted(values | {0} | set(kidney_labels))), "nnunet")


def _nnunet_cases(root: Path, kidney_labels: tuple[int, ...] | None
                  ) -> tuple[list[Case], list[str], LabelPolicy]:
    path = root / "dataset.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, "dataset.json", "readable JSON", f"{type(err).__name__}: {err}") from None
    if not isinstance(info, dict) or not isinstance(info.get("labels"), dict):
        raise DataError(path, "labels", "a 'labels' mapping of names to values", "none")
    check_nnunet_labels(info["labels"], path)
    policy = _nnunet_policy(info["labels"], path, kidney_labels)
    ending = str(info.get("file_ending", ".nii.gz"))
    skipped: list[str] = []
    channels = info.get("channel_names") or info.get("modality") or {"0": "CT"}
    if len(channels) > 1:
        skipped.append(f"{path}: {len(channels)} channels; only channel 0 ({channels.get('0', '?')}) is read")
    cases: dict[str, Case] = {}
    labels_dir = root / "labelsTr"
    for images_dir, annotated in ((root / "imagesTr", True), (root / "imagesTs", False)):
        for image in sorted(images_dir.glob(f"*{ending}")) if images_dir.is_dir() else []:
            name = image.name[: -len(ending)]
            if not re.search(r"_\d{4}$", name):
                skipped.append(f"{image}: skipped: not NAME_XXXX{ending}")
                continue
            case_id, channel = name[:-5], name[-4:]
            if channel != "0000":
                continue
            if case_id in cases:
                skipped.append(f"{image}: skipped: case {case_id} is also in imagesTr")
                continue
            label = labels_dir / f"{case_id}{ending}"
            cases[case_id] = Case(case_id, image, label if annotated and _present(label) else None,
                                  image)
    for label in sorted(labels_dir.glob(f"*{ending}")) if labels_dir.is_dir() else []:
        case_id = label.name[: -len(ending)]
        if case_id not in cases:
            cases[case_id] = Case(case_id, None, label, root / "imagesTr" / f"{case_id}_0000{ending}")
    return [cases[k] for k in sorted(cases)], skipped, policy


def _pairs_cases(root: Path) -> tuple[list[Case], list[str]]:
    dirs = _pair_dirs(root)
    skipped: list[str] = []
    if dirs is not None:
        images = _one_per_name([(_stem(p), p) for p in _niftis(dirs[0])], dirs[0], "images")
        labels = _one_per_name([(_stem(p), p) for p in _niftis(dirs[1])], dirs[1], "labels")
        for stem in list(images):  # nnU-Net style channel suffix without dataset.json
            if stem.endswith("_0000") and stem[:-5] in labels and stem[:-5] not in images:
                images[stem[:-5]] = images.pop(stem)
        expected_dir = dirs[0]
    else:
        image_files, label_files = [], []
        for p in _niftis(root):
            stem = _stem(p)
            suffix = next((s for s in _LABEL_SUFFIXES if stem.lower().endswith(s)), None)
            if suffix is None:
                image_files.append((stem, p))
            else:
                label_files.append((stem[: -len(suffix)], p))
        images = _one_per_name(image_files, root, "images")
        labels = _one_per_name(label_files, root, "labels")
        expected_dir = root
    cases = []
    for case_id in sorted(set(images) | set(labels)):
        image = images.get(case_id)
        cases.append(Case(case_id, image, labels.get(case_id),
                          image or expected_dir / f"{case_id}.nii.gz"))
    return cases, skipped


def open_dataset(root: str | Path, data_format: str | None = None,
                 kidney_labels: tuple[int, ...] | None = None) -> Dataset:
    """Discover the cases of a dataset and its label policy.

    Args:
        root: dataset folder.
        data_format: one of :data:`FORMATS`, or ``None``/``"auto"`` to detect it.
        kidney_labels: labels that form the kidney target, replacing the format's default
            (KiTS19 1, 2; KiTS23 1, 2, 3; nnU-Net: from ``dataset.json``).

    Raises:
        DataError: no such folder, an unknown format, no cases, or an unreadable ``dataset.json``.
    """
    root = Path(root).absolute()
    if data_format in (None, "auto"):
        data_format = detect_format(root)
    elif data_format not in FORMATS:
        raise DataError(root, "format", f"one of {', '.join(FORMATS)} or auto", repr(data_format))
    elif not root.is_dir():
        raise DataError(root, "dataset", "a folder of case_XXXXX folders", "no such folder")
    skipped: list[str] = []
    if data_format == "nnunet":
        cases, skipped, policy = _nnunet_cases(root, kidney_labels)
    elif data_format in ("kits19", "kits23"):
        cases, skipped = _kits_cases(root, data_format == "kits23")
        policy = default_policy(data_format)
    else:
        cases, skipped = _pairs_cases(root)
        policy = default_policy(data_format)
    if not cases:
        expected = {"nnunet": "imagesTr/NAME_0000.nii.gz (nnU-Net)",
                    "pairs": "images/ + labels/ folders or NAME.nii.gz + NAME_seg.nii.gz files"
                    }.get(data_format, f"case_XXXXX folders ({data_format.upper()} layout)")
        raise DataError(root, "dataset", expected, "none",
                        hint="; ".join(skipped) if skipped else describe_folder(root))
    return Dataset(root, data_format, cases, policy.with_kidney_labels(kidney_labels), skipped)


def file_sha256(path: Path) -> str:
    """The SHA-256 hex digest of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_disjoint_cases(train: Dataset, test: Dataset, *, shown: int = 5) -> None:
    """Refuse a test dataset that shares a case with the training dataset.

    Shared means the same case id, the same image file (symbolic links resolved), or an image
    file with the same content (SHA-256; only files of equal size are hashed, so disjoint
    datasets cost one ``stat`` per file). The same scan stored differently (``.nii`` vs
    ``.nii.gz``, another compression level) is not recognised.

    Args:
        train: the dataset whose cases are trained on and validated on.
        test: the separate held-out test dataset.

    Raises:
        DataError: naming the test dataset and the shared cases (up to ``shown`` of them).
    """
    shared: list[str] = []
    train_ids = {c.case_id for c in train.cases}
    shared += [f"{c.case_id} (same case id)" for c in test.cases if c.case_id in train_ids]
    by_size: dict[int, list[tuple[str, Path]]] = {}
    for case in train.cases:
        if case.imaging is not None and case.imaging.is_file():
            by_size.setdefault(case.imaging.stat().st_size, []).append((case.case_id, case.imaging))
    hashes: dict[Path, str] = {}

    def digest(path: Path) -> str:
        real = path.resolve()
        if real not in hashes:
            hashes[real] = file_sha256(real)
        return hashes[real]

    for case in test.cases:
        if case.imaging is None or not case.imaging.is_file() or case.case_id in train_ids:
            continue
        for train_id, image in by_size.get(case.imaging.stat().st_size, []):
            if image.resolve() == case.imaging.resolve():
                shared.append(f"{case.case_id} (the image file of training case {train_id})")
                break
            if digest(image) == digest(case.imaging):
                shared.append(f"{case.case_id} (the same image content as training case {train_id})")
                break
    if shared:
        more = f", ... ({len(shared)} cases)" if len(shared) > shown else ""
        raise DataError(test.root, "test cases", f"cases not in the training dataset {train.root}",
                        ", ".join(shared[:shown]) + more,
                        hint="a test case must never be trained or validated on; give a separate test dataset")
