"""Scans without masks as extra images for the image-only pretraining methods (MAE, Models
Genesis): listed from any input ``kidneyssl predict`` reads (a NIfTI file, a KiTS-layout folder, a
folder of NIfTI files, DICOM series) or from a dataset folder (nnU-Net raw, image/label pairs),
and prepared once with the run's preprocessing into a cache (:func:`prepare_scans`).

No mask is ever read: a dataset folder's label files are listed only to be left out, and every
scan is prepared as an image alone. DICOM series are written once as NIfTI copies (the cache's
preprocessing reads NIfTI). A scan that is an image of a validation or test case of the split the
pretraining serves (the same case id, file, or file content) is refused
(:func:`check_scans_held_out`): pretraining must never see a held-out image.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from kidneyssl.config import PreprocessConfig
from kidneyssl.data.cache import Cache
from kidneyssl.errors import DataError
from kidneyssl.io.kits19 import Case

__all__ = ["UnlabeledScans", "find_scans", "prepare_scans", "open_scans", "check_scans_held_out"]

log = logging.getLogger(__name__)

_CASE = re.compile(r"^case_\d+$")


@dataclass(frozen=True)
class UnlabeledScans:
    """Scans without masks, prepared.

    Attributes:
        cache: the prepared cache (images only).
        case_ids: the prepared scans' ids in ``cache``.
        report: ``input`` (the folder or file given), ``scans`` (found), ``used`` (prepared),
            ``failed`` (id -> reasons) for ``run.json``.
    """

    cache: Cache
    case_ids: tuple[str, ...]
    report: dict[str, Any]


def _dataset_images(path: Path) -> tuple[list[Case], set[Path]]:
    """(image-only cases, the label files to leave out) of a dataset folder, or ([], set())."""
    from kidneyssl.io.datasets import open_dataset

    is_nnunet = (path / "dataset.json").is_file() and (path / "imagesTr").is_dir()
    try:  # lists files only (nnU-Net: reads dataset.json); KiTS case folders are predict's own layout
        dataset = open_dataset(path, "nnunet" if is_nnunet else "pairs")
    except DataError:
        return [], set()
    labels = {c.segmentation.absolute() for c in dataset.cases if c.segmentation is not None}
    return [Case(c.case_id, c.imaging, None) for c in dataset.cases if c.imaging is not None], labels


def find_scans(input_path: str | Path) -> list[tuple[Case, str]]:
    """The scans under ``input_path`` as image-only cases with their kind (``nifti``/``dicom``),
    sorted by id.

    Raises:
        DataError: no such path, or it holds no scans.
    """
    from kidneyssl.inference.inputs import find_inputs

    path = Path(input_path)
    found: list[tuple[Case, str]] = []
    listed: DataError | None = None
    try:
        items = find_inputs(path)
    except DataError as err:  # e.g. an nnU-Net folder or images/ + labels/: no scan at the top level
        items, listed = [], err
    dataset_cases, label_files = _dataset_images(path) if path.is_dir() else ([], set())
    for item in items:
        if Path(item.path).absolute() in label_files:  # a mask beside its image (NAME_seg.nii.gz)
            continue
        case_id = item.name if _CASE.match(item.name) else item.output_id  # case_00012, else the file stem
        found.append((Case(case_id, Path(item.path), None), item.kind))
    if not found:
        found = [(case, "nifti") for case in dataset_cases]
    if not found:
        raise listed or DataError(path, "input", "scans (NIfTI files, case folders, DICOM series or a dataset "
                                  "folder)", "none")
    ids = [case.case_id for case, _ in found]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise DataError(path, "scan names", "one scan per name", f"several scans named {dupes[:3]}")
    return sorted(found, key=lambda f: f[0].case_id)


def _nifti_copy(case: Case, folder: Path) -> Case:
    """A DICOM series as a NIfTI copy in ``folder`` (written once)."""
    from kidneyssl.inference.inputs import read_dicom_series
    from kidneyssl.io.volumes import write_volume

    assert case.imaging is not None
    target = folder / f"{case.case_id}.nii.gz"
    if not target.is_file():
        volume = read_dicom_series(case.imaging)
        write_volume(volume.array, volume.geometry, target)
    return Case(case.case_id, target, None)


def check_scans_held_out(scans: Sequence[Case], held_out: Mapping[str, Path | None], source: str | Path) -> None:
    """Refuse scans that are images of held-out cases.

    Args:
        scans: the scans (image-only cases).
        held_out: held-out case id -> its image file (None when not recorded).
        source: the scans' folder, for the message.

    Raises:
        DataError: a scan has a held-out case's id, is its image file (links resolved), or has
            the same content (SHA-256, hashed only for files of equal size).
    """
    from kidneyssl.io.datasets import file_sha256

    shared = [f"{c.case_id} (a held-out case id)" for c in scans if c.case_id in held_out]
    by_size: dict[int, list[tuple[str, Path]]] = {}
    for cid, image in held_out.items():
        if image is not None and image.is_file():
            by_size.setdefault(image.stat().st_size, []).append((cid, image))
    for case in scans:
        if case.case_id in held_out or case.imaging is None or not case.imaging.is_file():
            continue
        for cid, image in by_size.get(case.imaging.stat().st_size, []):
            if image.resolve() == case.imaging.resolve() or file_sha256(image) == file_sha256(case.imaging):
                shared.append(f"{case.case_id} (the image of held-out case {cid})")
                break
    if shared:
        raise DataError(Path(source), "scans without masks", "no image of a validation or test case",
                        ", ".join(shared[:5]) + (f", ... ({len(shared)})" if len(shared) > 5 else ""),
                        hint="pretraining must never read a held-out image; remove those scans")


def prepare_scans(input_path: str | Path, cache_dir: str | Path, cfg: PreprocessConfig, *,
                  held_out: Mapping[str, Path | None] | None = None, workers: int = 1) -> UnlabeledScans:
    """List the scans of ``input_path`` and prepare them into ``cache_dir`` with ``cfg`` (resumable:
    scans already prepared with this config and these files are skipped). DICOM series are first
    copied as NIfTI into ``cache_dir/dicom_as_nifti``.

    Args:
        held_out: the split's validation and test cases (id -> image file): refused as scans.

    Raises:
        DataError: no scans; a scan is a held-out image; no scan could be prepared.
    """
    from kidneyssl.data.prepare import prepare_cases

    cache_dir = Path(cache_dir)
    found = find_scans(input_path)
    cases = [case for case, _ in found]
    check_scans_held_out(cases, held_out or {}, input_path)
    copies = cache_dir / "dicom_as_nifti"
    if any(kind == "dicom" for _, kind in found):
        copies.mkdir(parents=True, exist_ok=True)
    cases = [_nifti_copy(case, copies) if kind == "dicom" else case for case, kind in found]
    summary = prepare_cases(cases, cache_dir, cfg, workers=workers,
                            source={"data_format": "scans", "data_dir": str(Path(input_path).absolute())})
    if not summary.cases:
        raise DataError(Path(input_path), "scans", "at least one scan that can be prepared",
                        f"none of {len(cases)} ({'; '.join(r for rs in summary.failed.values() for r in rs)[:300]})")
    return open_scans(input_path, cache_dir, cfg, found=len(cases))


def open_scans(input_path: str | Path, cache_dir: str | Path, cfg: PreprocessConfig,
               found: int | None = None) -> UnlabeledScans:
    """The :class:`UnlabeledScans` already prepared into ``cache_dir`` by :func:`prepare_scans`."""
    from kidneyssl.data.cache import open_cache

    cache = open_cache(cache_dir, expected=cfg)
    failed = dict(cache.info.get("failed") or {})
    report = {"input": str(Path(input_path).absolute()), "scans": found if found is not None
              else len(cache.case_ids) + len(failed), "used": len(cache.case_ids), "failed": failed}
    return UnlabeledScans(cache, tuple(cache.case_ids), report)
