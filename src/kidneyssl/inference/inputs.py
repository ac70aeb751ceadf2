"""What ``predict`` reads: a NIfTI file, a KiTS19-layout folder, a folder of NIfTI files, or
DICOM series folders; and the output id each scan's prediction is named after.

Naming (the KiTS19 submission format for KiTS cases):

- ``case_XXXXX/imaging.nii.gz`` (or the file itself) -> ``prediction_XXXXX.nii.gz``
- ``<stem>.nii.gz`` / ``<stem>.nii`` -> ``prediction_<stem>.nii.gz``
- a DICOM series folder ``<name>/`` -> ``prediction_<name>.nii.gz``
"""

from __future__ import annotations

import contextlib
import locale
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from kidneyssl.errors import DataError
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.volumes import affine_from_sitk

__all__ = ["PredictionInput", "find_inputs", "read_input", "read_dicom_series", "check_slice_positions",
           "SLICE_STEP_TOLERANCE"]

log = logging.getLogger(__name__)

_CASE_RE = re.compile(r"^case_(\d+)$")
#: What predict writes: never taken as an input when a folder is scanned.
_OUTPUT_RE = re.compile(r"^(prediction|probability)_.+\.nii(\.gz)?$")
_NIFTI = (".nii.gz", ".nii")


@dataclass(frozen=True)
class PredictionInput:
    """One scan to predict.

    Attributes:
        name: how the scan is called in messages (e.g. ``case_00012`` or a file name).
        output_id: the ``XXXXX`` of ``prediction_XXXXX.nii.gz``.
        path: the NIfTI file or DICOM series folder.
        kind: ``nifti`` or ``dicom``.
    """

    name: str
    output_id: str
    path: Path
    kind: str = "nifti"

    @property
    def paths(self) -> tuple[Path, ...]:
        return (self.path,)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in _NIFTI:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_nifti(path: Path) -> bool:
    """A NIfTI file, or a broken symbolic link named like one (listed, so that reading it fails
    and says so: a scan is never skipped silently)."""
    present = path.is_file() or (path.is_symlink() and not path.exists())
    return present and path.name.endswith(_NIFTI) and not path.name.startswith(".")


@contextlib.contextmanager
def _keep_locale() -> Iterator[None]:
    """Restore the C locale after GDCM calls: ITK's DICOM IO switches LC_CTYPE to "C", after
    which Python's default text encoding becomes ASCII for the rest of the process."""
    saved = locale.setlocale(locale.LC_ALL)
    try:
        yield
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _looks_like_dicom(folder: Path, probe: int = 5) -> bool:
    """A ``.dcm``/``.ima`` file, or the ``DICM`` magic at byte 128, among the first files."""
    checked = 0
    for child in sorted(folder.iterdir()):
        if not child.is_file() or child.name.startswith("."):
            continue
        if child.suffix.lower() in (".dcm", ".ima"):
            return True
        try:
            with child.open("rb") as fh:
                fh.seek(128)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            pass
        checked += 1
        if checked >= probe:
            return False
    return False


def _dicom_series_ids(folder: Path) -> list[str]:
    if not _looks_like_dicom(folder):
        return []
    import SimpleITK as sitk

    try:
        with _keep_locale():
            return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])
    except RuntimeError:
        return []


def _nifti_input(path: Path) -> PredictionInput:
    match = _CASE_RE.match(path.parent.name)
    if path.name.startswith("imaging.") and match:
        return PredictionInput(path.parent.name, match.group(1), path)
    return PredictionInput(path.name, _stem(path), path)


def find_inputs(input_path: str | Path) -> list[PredictionInput]:
    """Scans under ``input_path``, sorted by name.

    A KiTS19 case folder without ``imaging.nii.gz`` is still listed (its read then fails with a
    DataError, reported for that case alone). Hidden files (our temporary files among them) and
    predict's own outputs (``prediction_*.nii.gz``, ``probability_*.nii.gz``) are never inputs of
    a folder scan, so ``--out`` may be the input folder; skipped outputs are logged.

    Raises:
        DataError: ``input_path`` does not exist, holds no scans, or two scans would be written to
            the same prediction file.
    """
    path = Path(input_path)
    if _is_nifti(path):
        return [_nifti_input(path)]
    if not path.is_dir():
        from kidneyssl.io.paths import describe_missing

        raise DataError(path, "input", "a NIfTI file, a KiTS19-layout folder, a folder of NIfTI "
                        "files or DICOM series", "missing" if not path.exists() else "another kind of file",
                        hint=describe_missing(path) if not path.exists() else "")
    items: list[PredictionInput] = []
    if _dicom_series_ids(path):
        items.append(PredictionInput(path.name, path.name, path, "dicom"))
    own_outputs = []
    for child in sorted(path.iterdir()):
        if child.name.startswith("."):  # hidden, and our temporary files
            continue
        if _OUTPUT_RE.match(child.name) and child.is_file():  # written by predict (--out = input)
            own_outputs.append(child.name)
            continue
        match = _CASE_RE.match(child.name)
        if child.is_dir() and match:
            items.append(PredictionInput(child.name, match.group(1), child / "imaging.nii.gz"))
        elif _is_nifti(child):
            items.append(_nifti_input(child))
        elif child.is_dir() and _dicom_series_ids(child):
            items.append(PredictionInput(child.name, child.name, child, "dicom"))
    if own_outputs:
        log.info("%s: skipped %d file(s) named like predict's outputs (%s%s)", path.absolute(),
                 len(own_outputs), ", ".join(own_outputs[:3]), ", ..." if len(own_outputs) > 3 else "")
    if not items:
        raise DataError(path, "input", "NIfTI files, case_XXXXX/imaging.nii.gz or DICOM series",
                        "no scans" + (f" (only {len(own_outputs)} prediction/probability outputs)"
                                      if own_outputs else ""))
    seen: dict[str, str] = {}
    for item in items:
        if item.output_id in seen:
            raise DataError(path, "input names", "one scan per prediction name",
                            f"{seen[item.output_id]} and {item.name} both map to "
                            f"prediction_{item.output_id}.nii.gz")
        seen[item.output_id] = item.name
    return items


#: Slice spacing tolerance of a DICOM series: every step between neighbouring slice positions
#: (ImagePositionPatient along the slice normal) must be within this fraction of the median step.
#: A missing slice (a step of 2x), a duplicated one (0x) or a shifted one is refused; positions
#: rounded to 0.01 mm at 0.5 mm slices (2 %) pass.
SLICE_STEP_TOLERANCE = 0.05
_SHOWN_STEPS = 3


def _numbers(text: str, n: int) -> np.ndarray | None:
    try:
        values = np.array([float(v) for v in text.strip().split("\\")], dtype=np.float64)
    except ValueError:
        return None
    return values if values.shape == (n,) and np.isfinite(values).all() else None


def check_slice_positions(folder: Path, series_id: str, files: list[str]) -> None:
    """Refuse a DICOM series whose slices are not evenly spaced along their normal.

    The position of each slice is its ImagePositionPatient (0020,0032) projected on the normal of
    its ImageOrientationPatient (0020,0037); the sorted positions must step by the median step
    to within :data:`SLICE_STEP_TOLERANCE` of it, and every slice must have the same orientation.
    (SimpleITK would otherwise build an evenly spaced grid over a missing, duplicated or shifted
    slice, with only a warning.)

    Raises:
        DataError: naming the folder, the series and the positions that do not fit.
    """
    import SimpleITK as sitk

    where = f"series {series_id}"
    if len(files) < 2:
        return
    reader = sitk.ImageFileReader()
    positions: list[float] = []
    normal: np.ndarray | None = None
    first_orientation: np.ndarray | None = None
    with _keep_locale():
        for name in files:
            reader.SetFileName(name)
            try:
                reader.ReadImageInformation()
                ipp = _numbers(reader.GetMetaData("0020|0032"), 3) if reader.HasMetaDataKey("0020|0032") else None
                iop = _numbers(reader.GetMetaData("0020|0037"), 6) if reader.HasMetaDataKey("0020|0037") else None
            except RuntimeError:
                ipp = iop = None
            if ipp is None or iop is None:
                raise DataError(folder, "dicom", f"{where}: an ImagePositionPatient and ImageOrientationPatient "
                                "in every slice (the slice positions)", f"none readable in {Path(name).name}",
                                hint="the slice spacing would be a guess")
            if first_orientation is None:
                first_orientation = iop
                normal = np.cross(iop[:3], iop[3:])
                if not np.linalg.norm(normal) > 0.5:
                    raise DataError(folder, "dicom", f"{where}: an ImageOrientationPatient of two unit vectors",
                                    f"{iop.tolist()} in {Path(name).name}")
                normal = normal / np.linalg.norm(normal)
            elif np.abs(iop - first_orientation).max() > 1e-3:
                raise DataError(folder, "dicom", f"{where}: one orientation for every slice",
                                f"{iop.tolist()} in {Path(name).name}, {first_orientation.tolist()} in "
                                f"{Path(files[0]).name}")
            assert normal is not None
            positions.append(float(np.dot(ipp, normal)))
    order = np.argsort(positions, kind="stable")
    pos = np.asarray(positions)[order]
    steps = np.diff(pos)
    median = float(np.median(steps))
    tol = SLICE_STEP_TOLERANCE * median
    bad = np.flatnonzero(np.abs(steps - median) > tol) if median > 0 else np.arange(len(steps))
    if bad.size == 0:
        return
    duplicates = [i for i in bad if steps[i] <= tol]
    shown = "; ".join(
        (f"two slices at {pos[i]:.3f} mm ({Path(files[order[i]]).name}, {Path(files[order[i + 1]]).name})"
         if i in duplicates else f"a step of {steps[i]:.3f} mm from {pos[i]:.3f} to {pos[i + 1]:.3f} mm")
        for i in bad[:_SHOWN_STEPS]) + (f"; ... ({bad.size} irregular steps)" if bad.size > _SHOWN_STEPS else "")
    raise DataError(folder, "dicom", f"{where}: {len(files)} slices evenly spaced along the slice normal (the "
                    f"median step {median:.3f} mm, to {SLICE_STEP_TOLERANCE:.0%})", shown,
                    hint="a missing, duplicated or shifted slice; its grid would be a guess")


def read_dicom_series(folder: str | Path) -> Volume:
    """The DICOM series in ``folder`` as a :class:`Volume` (nibabel array order and RAS+
    affine, as :func:`kidneyssl.io.volumes.read_volume` gives for NIfTI).

    A folder must hold one series, and its slices must be evenly spaced
    (:func:`check_slice_positions`): no geometry is guessed.

    Raises:
        DataError: no readable 3-D series in the folder, several series (their UIDs are named),
            or slice positions that are not evenly spaced.
    """
    import SimpleITK as sitk

    folder = Path(folder)
    ids = _dicom_series_ids(folder) if folder.is_dir() else []
    if not ids:
        raise DataError(folder, "dicom", "a folder holding a DICOM series", "no series")
    if len(ids) > 1:
        raise DataError(folder, "dicom", "one DICOM series per folder", f"{len(ids)} series: {', '.join(ids)}",
                        hint="move each series into a folder of its own; each is then read on its own")
    reader = sitk.ImageSeriesReader()
    try:
        with _keep_locale():
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
        check_slice_positions(folder, ids[0], files)
        with _keep_locale():
            reader.SetFileNames(files)
            image = reader.Execute()
    except RuntimeError as err:
        lines = str(err).strip().splitlines()
        raise DataError(folder, "dicom", "a readable DICOM series",
                        lines[-1][:200] if lines else "unreadable") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(folder, "dimensions", "a 3-D scalar image", f"size {image.GetSize()}")
    # SimpleITK: index (i, j, k), LPS world, array returned as (k, j, i). nibabel: array (i, j, k),
    # RAS world: the one conversion of kidneyssl.io.volumes.
    affine = affine_from_sitk(image.GetDirection(), image.GetSpacing(), image.GetOrigin())
    array = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise DataError(folder, "values", "finite intensities", "NaN or infinite voxels")
    return Volume(array, Geometry(affine=affine, shape=array.shape))


def read_input(item: PredictionInput, check: bool = False) -> Volume:
    """Read one scan (NIfTI through :func:`kidneyssl.io.volumes.read_volume`, or DICOM).

    Args:
        check: refuse an implausible scan (:func:`kidneyssl.io.plausibility.check_scan`: spacing,
            field of view, intensities not in HU, no body) and log warnings (oblique axes).

    Raises:
        DataError: unreadable, or (``check``) implausible; the message names the file.
    """
    if item.kind == "dicom":
        volume = read_dicom_series(item.path)
    else:
        from kidneyssl.io.volumes import read_volume

        volume = read_volume(item.path)
    if check:
        from kidneyssl.io.plausibility import check_scan

        check_scan(volume, item.path, refuse=True)
    return volume
