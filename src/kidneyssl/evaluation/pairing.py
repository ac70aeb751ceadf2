"""Pair predicted masks with ground-truth masks by case id.

Predictions: ``prediction_XXXXX.nii.gz`` (-> ``case_XXXXX``), ``prediction_<stem>.nii.gz`` or
``<stem>.nii.gz`` (``probability_*`` maps are ignored). Ground truth: a KiTS19/KiTS23 folder
(``case_XXXXX/segmentation.nii.gz``; KiTS21 ``aggregated_MAJ_seg.nii.gz``), an nnU-Net raw folder
(``labelsTr/<case>.nii.gz``), an image/label pairs folder (``labels/<stem>.nii.gz``) or a flat
folder of ``<stem>.nii.gz`` masks.
"""

from __future__ import annotations

import re
from pathlib import Path

from kidneyssl.errors import DataError

__all__ = ["pair_cases", "index_masks", "case_id_of"]

_CASE_DIR = re.compile(r"^case_\d{5}$")
_NIFTI = (".nii.gz", ".nii")
_SEGMENTATIONS = ("segmentation.nii.gz", "segmentation.nii", "aggregated_MAJ_seg.nii.gz")
_LABEL_DIRS = ("labelsTr", "labels", "masks", "segmentations")


def _stem(path: Path) -> str:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def case_id_of(stem: str) -> str:
    """``prediction_00001`` -> ``case_00001``; ``prediction_foo`` -> ``foo``; other stems unchanged."""
    if stem.startswith("prediction_"):
        rest = stem[len("prediction_"):]
        return f"case_{rest}" if re.fullmatch(r"\d{5}", rest) else rest
    return stem


def _masks_folder(folder: Path) -> Path:
    """The folder holding the masks: ``labelsTr``/``labels``/... beside images, else ``folder``."""
    if any(folder.glob("case_*")):
        return folder
    for name in _LABEL_DIRS:
        if (folder / name).is_dir():
            return folder / name
    return folder


def index_masks(folder: str | Path, role: str) -> dict[str, Path]:
    """Map case id -> mask file for a KiTS-layout, nnU-Net, pairs or flat folder.

    Raises:
        DataError: no such folder, or two masks for one case.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(folder, role, "a folder of NIfTI masks", "no such folder")
    found: dict[str, Path] = {}

    def add(case_id: str, path: Path) -> None:
        if case_id in found:
            raise DataError(folder, role, "one mask per case", f"two for {case_id}: {found[case_id].name}, {path.name}")
        found[case_id] = path

    for entry in sorted(_masks_folder(folder).iterdir()):
        if entry.is_dir() and _CASE_DIR.match(entry.name):
            for name in _SEGMENTATIONS:
                if _present(entry / name):
                    add(entry.name, entry / name)
                    break
        elif _present(entry) and entry.name.endswith(_NIFTI) and not entry.name.startswith((".", "probability_")):
            add(case_id_of(_stem(entry)), entry)
    return found


def _present(path: Path) -> bool:
    """A file, or a broken symbolic link (paired, so that reading it fails and says so)."""
    return path.is_file() or (path.is_symlink() and not path.exists())


def pair_cases(pred_dir: str | Path, gt_dir: str | Path) -> tuple[list[tuple[str, Path | None, Path]], list[Path]]:
    """Pair prediction files with ground-truth files by case id.

    Returns:
        ``(pairs, unmatched)``: ``(case_id, prediction or None, ground_truth)`` for every ground-truth
        case, sorted by id; and prediction files that have no ground truth.

    Raises:
        DataError: a folder is missing, holds two masks for one case, or ``gt_dir`` holds none.
    """
    gts = index_masks(Path(gt_dir), "ground truth")
    preds = index_masks(Path(pred_dir), "predictions")
    if not gts:
        raise DataError(gt_dir, "ground truth", "case_XXXXX/segmentation.nii.gz or *.nii.gz masks", "none")
    pairs = [(cid, preds.get(cid), gts[cid]) for cid in sorted(gts)]
    unmatched = [preds[cid] for cid in sorted(preds) if cid not in gts]
    return pairs, unmatched
