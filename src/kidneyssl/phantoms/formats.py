"""Phantom datasets in every format :mod:`kidneyssl.io.datasets` reads, so each reader is tested
without external data.

- ``kits19``: :func:`~kidneyssl.phantoms.dataset.write_dataset` (labels 0/1/2);
- ``kits23``: the same case folders plus a ``kits23.json`` marker; every case gains a small cyst
  (label 3) inside a kidney, so that "cyst counts as kidney" is exercised;
- ``nnunet``: ``dataset.json`` + ``imagesTr/case_XXXXX_0000.nii.gz`` + ``labelsTr/case_XXXXX.nii.gz``
  as a multi-organ label map: 1 spine (bone voxels), 2 right kidney, 3 left kidney, 4 kidney
  tumour, and an empty "adrenal gland" label 5; only 2, 3, 4 are kidney;
- ``pairs``: ``images/phantom_XXX.nii.gz`` + ``labels/phantom_XXX.nii.gz`` (labels 0/1/2).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from kidneyssl.errors import RunFolderError
from kidneyssl.io.atomic import atomic_write_json
from kidneyssl.io.geometry import Volume
from kidneyssl.phantoms.dataset import case_id, case_seed, write_dataset, write_nifti
from kidneyssl.phantoms.generate import generate_case

__all__ = ["SYNTH_FORMATS", "NNUNET_LABELS", "to_format_labels", "write_case_as", "write_dataset_as"]

SYNTH_FORMATS = ("kits19", "kits23", "nnunet", "pairs")
#: The ``labels`` of the phantom nnU-Net dataset.json (kidney labels: 2, 3, 4).
NNUNET_LABELS = {"background": 0, "spine": 1, "right kidney": 2, "left kidney": 3,
                 "kidney_tumor": 4, "adrenal gland": 5}
_BONE_HU = 350


def _add_cyst(label: np.ndarray) -> np.ndarray:
    """A copy of a 0/1/2 label with a small ball of kidney (label 1) relabelled 3 (cyst)."""
    out = label.copy()
    kidney = np.argwhere(label == 1)
    if len(kidney) == 0:
        return out
    centre = kidney[len(kidney) // 2]
    z, y, x = np.ogrid[tuple(slice(0, n) for n in label.shape)]
    ball = ((z - centre[0]) ** 2 + ((y - centre[1]) / 2.0) ** 2 + ((x - centre[2]) / 2.0) ** 2) <= 1.0
    out[ball & (label == 1)] = 3
    return out


def to_format_labels(image: np.ndarray, label: np.ndarray, data_format: str) -> np.ndarray:
    """The KiTS19 label (0/1/2) of a case as the format's label map (see the module docstring).

    The image is canonical-ish KiTS19 (I, P, L): patient right at low x, so the lateral split for
    the nnU-Net map is the middle of the x axis.
    """
    if data_format in ("kits19", "pairs"):
        return label
    if data_format == "kits23":
        return _add_cyst(label)
    if data_format == "nnunet":
        out = np.zeros(label.shape, np.uint8)
        out[(image >= _BONE_HU) & (label == 0)] = NNUNET_LABELS["spine"]
        left = np.zeros(label.shape, bool)
        left[..., label.shape[-1] // 2:] = True
        out[(label == 1) & ~left] = NNUNET_LABELS["right kidney"]
        out[(label == 1) & left] = NNUNET_LABELS["left kidney"]
        out[label == 2] = NNUNET_LABELS["kidney_tumor"]
        return out
    raise ValueError(f"data_format must be one of {SYNTH_FORMATS}, got {data_format!r}")


def write_case_as(image: Volume, label: Volume, out_dir: str | Path, data_format: str, name: str) -> None:
    """Write one case (KiTS19 labels) in ``data_format`` under ``out_dir`` (dataset.json not included)."""
    out = Path(out_dir)
    lab = Volume(to_format_labels(image.array, label.array, data_format), label.geometry)
    if data_format in ("kits19", "kits23"):
        write_nifti(lab, out / name / "segmentation.nii.gz")
        write_nifti(image, out / name / "imaging.nii.gz")
    elif data_format == "nnunet":
        write_nifti(lab, out / "labelsTr" / f"{name}.nii.gz")
        write_nifti(image, out / "imagesTr" / f"{name}_0000.nii.gz")
    elif data_format == "pairs":
        write_nifti(lab, out / "labels" / f"{name}.nii.gz")
        write_nifti(image, out / "images" / f"{name}.nii.gz")
    else:
        raise ValueError(f"data_format must be one of {SYNTH_FORMATS}, got {data_format!r}")


def write_format_metadata(out_dir: str | Path, data_format: str, cases: int) -> None:
    """The format's dataset-level file: ``kits23.json`` marker or nnU-Net ``dataset.json``."""
    out = Path(out_dir)
    if data_format == "kits23":
        atomic_write_json(out / "kits23.json", {"generator": "kidneyssl.phantoms", "labels": {
            "0": "background", "1": "kidney", "2": "tumor", "3": "cyst"}})
    elif data_format == "nnunet":
        atomic_write_json(out / "dataset.json", {
            "name": "kidneyssl phantoms", "channel_names": {"0": "CT"}, "labels": NNUNET_LABELS,
            "numTraining": cases, "file_ending": ".nii.gz"})


def _name(data_format: str, index: int) -> str:
    return f"phantom_{index:03d}" if data_format == "pairs" else case_id(index)


def write_dataset_as(out_dir: str | Path, data_format: str, cases: int, seed: int,
                     resolution: str = "demo", workers: int = 1, force: bool = False) -> list[str]:
    """Write ``cases`` phantom cases in ``data_format``; return the case ids.

    ``kits19`` is :func:`~kidneyssl.phantoms.dataset.write_dataset` (resumable, manifest); the
    other formats are written in this process into an empty folder (or any folder with ``force``).

    Raises:
        RunFolderError: ``out_dir`` is not empty and ``force`` is False.
        ValueError: an unknown format, or ``cases < 1``.
    """
    if data_format not in SYNTH_FORMATS:
        raise ValueError(f"data_format must be one of {SYNTH_FORMATS}, got {data_format!r}")
    if data_format == "kits19":
        folders = write_dataset(out_dir, cases=cases, seed=seed, resolution=resolution,
                                workers=workers, force=force)
        return [f.name for f in folders]
    if cases < 1:
        raise ValueError(f"cases must be >= 1, got {cases}")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise RunFolderError(f"{out.absolute()}: is not empty; choose an empty folder or replace its contents",
                             remedy=("out", "force"))
    from kidneyssl.progress import progress

    names = [_name(data_format, i) for i in range(cases)]
    for i in progress(range(cases), desc="synth", unit="case"):
        image, label = generate_case(case_seed(seed, i), resolution)
        write_case_as(image, label, out, data_format, names[i])
    write_format_metadata(out, data_format, cases)
    (out / "phantoms.json").write_text(json.dumps(
        {"generator": "kidneyssl.phantoms", "format": data_format, "seed": int(seed),
         "resolution": resolution, "cases": cases}, indent=1))
    return names
