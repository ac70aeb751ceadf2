"""KiTS19-layout datasets: case discovery, label constants and integrity checks.

A dataset is a folder of ``case_XXXXX/`` folders holding ``imaging.nii.gz`` and, for annotated
cases, ``segmentation.nii.gz`` (0 background, 1 kidney, 2 tumour; the kidney target is label > 0).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kidneyssl.errors import DataError
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.labels import KITS19_POLICY, LabelPolicy
from kidneyssl.io.paths import describe_folder
from kidneyssl.io.plausibility import check_scan
from kidneyssl.io.volumes import read_geometry, read_volume

__all__ = [
    "BACKGROUND",
    "KIDNEY",
    "TUMOR",
    "LABEL_VALUES",
    "IMAGING_NAME",
    "SEGMENTATION_NAME",
    "Case",
    "find_cases",
    "check_case",
    "load_case",
]

BACKGROUND = 0
KIDNEY = 1
TUMOR = 2
LABEL_VALUES = (BACKGROUND, KIDNEY, TUMOR)
IMAGING_NAME = "imaging.nii.gz"
SEGMENTATION_NAME = "segmentation.nii.gz"
_CASE_RE = re.compile(r"^case_\d{5}$")
_AFFINE_ATOL_MM = 1e-3


@dataclass(frozen=True)
class Case:
    """One case: its id (folder name, or file stem) and its files (``None`` when absent).

    ``expected_imaging`` is where the imaging file should be (for the message when it is missing;
    default: ``imaging.nii.gz`` beside the segmentation).
    """

    case_id: str
    imaging: Path | None
    segmentation: Path | None
    expected_imaging: Path | None = None

    @property
    def annotated(self) -> bool:
        return self.segmentation is not None


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name[: -len(".gz")]):
        if candidate.is_file():
            return candidate
    return None


def find_cases(data_dir: str | Path) -> list[Case]:
    """All ``case_XXXXX`` folders of ``data_dir``, sorted by id.

    ``imaging`` / ``segmentation`` are the ``.nii.gz`` (or ``.nii``) files when present, else
    ``None`` (a case folder without imaging is kept so that :func:`check_case` reports it).

    Raises:
        DataError: ``data_dir`` is not a folder or holds no case folders.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(data_dir, "dataset", "a folder of case_XXXXX folders", "no such folder")
    cases = [
        Case(d.name, _find_file(d, IMAGING_NAME), _find_file(d, SEGMENTATION_NAME), d / IMAGING_NAME)
        for d in sorted(data_dir.iterdir())
        if d.is_dir() and _CASE_RE.match(d.name)
    ]
    if not cases:
        raise DataError(data_dir, "dataset", "case_XXXXX folders (KiTS19 layout)", "none")
    return cases


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _check_geometry(case: Case, image_geom: Geometry, label_geom: Geometry) -> list[DataError]:
    assert case.segmentation is not None and case.imaging is not None
    if image_geom.shape != label_geom.shape:
        return [DataError(case.segmentation, "shape", f"{_shape_str(image_geom.shape)} (as imaging)",
                          _shape_str(label_geom.shape), hint=f"imaging: {case.imaging}")]
    if not np.allclose(image_geom.affine, label_geom.affine, atol=_AFFINE_ATOL_MM):
        diff = float(np.abs(image_geom.affine - label_geom.affine).max())
        return [DataError(case.segmentation, "affine", "the imaging affine",
                          f"an affine differing by up to {diff:.4g}",
                          hint=f"imaging: {case.imaging}")]
    return []


def load_case(case: Case, require_imaging: bool = True, policy: LabelPolicy = KITS19_POLICY
              ) -> tuple[Volume | None, Volume | None, list[DataError]]:
    """Read and check one case in a single pass over its files (labels checked with ``policy``).

    Returns:
        (image Volume or None, label Volume or None, list of :class:`DataError`); volumes are
        ``None`` where their file is absent or bad. With errors, do not use the case.
    """
    errors: list[DataError] = []
    if case.imaging is None and require_imaging:
        expected = case.expected_imaging or (
            case.segmentation.parent if case.segmentation else Path(case.case_id)) / IMAGING_NAME
        errors.append(DataError(expected, "imaging", "an imaging file", "missing",
                                hint=describe_folder(expected.parent)))
    # Header checks first: cheap, and they catch shape/affine mismatches before any decompression.
    geoms: dict[str, Geometry] = {}
    for key, path in (("imaging", case.imaging), ("segmentation", case.segmentation)):
        if path is None:
            continue
        try:
            geoms[key] = read_geometry(path)
        except DataError as err:
            errors.append(err)
    if "imaging" in geoms and "segmentation" in geoms:
        errors.extend(_check_geometry(case, geoms["imaging"], geoms["segmentation"]))
    image = label = None
    if "imaging" in geoms:
        try:
            image = read_volume(case.imaging)  # type: ignore[arg-type]
        except DataError as err:
            errors.append(err)
        else:  # implausible for a kidney CT (tiny, not HU, ...): said on stderr, not refused
            check_scan(image, case.imaging, refuse=False)  # type: ignore[arg-type]
    if "segmentation" in geoms:
        try:
            label = read_volume(case.segmentation)  # type: ignore[arg-type]
        except DataError as err:
            errors.append(err)
        else:
            errors.extend(policy.check(case.segmentation, label.array))  # type: ignore[arg-type]
    return image, label, errors


def check_case(case: Case, require_imaging: bool = True,
               policy: LabelPolicy = KITS19_POLICY) -> list[DataError]:
    """Every problem of one case, as :class:`DataError` objects naming the file (empty if fine).

    Checked: missing imaging (unless ``require_imaging=False``, e.g. for mask-only folders),
    unreadable header, not 3-D, image/label shape or affine mismatch (headers only), corrupt or
    truncated gzip, NaN voxels, label values outside {0, 1, 2}, no kidney in the mask.
    Voxel data is read once per file (needed for the gzip, NaN and label checks).
    """
    return load_case(case, require_imaging=require_imaging, policy=policy)[2]
