"""Locate kidneys in scans without masks with a trained segmentation model (``kidneyssl locate``).

The located masks are pseudo-labels for pretraining on unlabeled scans. Output (a ``pairs``
dataset that ``kidneyssl prepare``/``check`` read, see :mod:`kidneyssl.io.datasets`)::

    OUT/images/<id>.nii.gz   the scan: a symbolic link to the input (a NIfTI copy for DICOM)
    OUT/labels/<id>.nii.gz   the located kidney mask (uint8 0/1) on the scan's own grid
    OUT/locate.json          status ("running" while it runs, "finished"), and
                             per case: files, kidney voxels and mL, connected components,
                             confidence = mean kidney probability inside the mask (0 if empty);
                             and the locator: its checkpoint and ``touched_cases`` (the annotated
                             cases whose labels shaped it, checked against a split when the
                             located scans feed pretraining: :mod:`kidneyssl.unlabeled.located`)

``<id>`` is ``case_XXXXX`` for KiTS case folders, else the file stem or DICOM folder name.
Prediction is :func:`kidneyssl.inference.predict_volume`, exactly as ``kidneyssl predict``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from kidneyssl.errors import KidneySSLError
from kidneyssl.io.geometry import Volume
from kidneyssl.io.paths import describe_os_error

__all__ = ["LOCATE_JSON", "LocateSummary", "kidney_confidence", "locate_scans", "locate_path"]

log = logging.getLogger(__name__)

LOCATE_JSON = "locate.json"
_CASE = re.compile(r"^case_\d+$")


@dataclass
class LocateSummary:
    """Outcome of :func:`locate_scans`: per-case records (see the module docstring), failures."""

    out_dir: Path
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def found(self) -> int:
        """Cases with at least one kidney voxel."""
        return sum(c["kidney_voxels"] > 0 for c in self.cases.values())

    def __str__(self) -> str:
        return (f"{len(self.cases)} scan(s) located ({self.found} with kidneys), "
                f"{len(self.failed)} failed -> {self.out_dir}")


def kidney_confidence(mask: np.ndarray, probabilities: np.ndarray,
                      spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
    """Confidence of one located mask: voxels, mL, components, mean probability inside.

    Args:
        mask: (Z, Y, X) uint8/bool kidney mask; probabilities: float map on the same grid.
        spacing_mm: voxel size, for the volume in mL.
    """
    from scipy import ndimage

    inside = mask > 0
    voxels = int(inside.sum())
    return {
        "kidney_voxels": voxels,
        "kidney_ml": round(voxels * float(np.prod(spacing_mm)) / 1000.0, 3),
        "components": int(ndimage.label(inside)[1]) if voxels else 0,
        "confidence": round(float(probabilities[inside].mean()), 4) if voxels else 0.0,
    }


def _case_id(name: str, output_id: str) -> str:
    return name if _CASE.match(name) else output_id


def _link_image(source: Path, target: Path, volume: Volume, kind: str) -> None:
    """``target`` -> ``source`` as a symbolic link (a NIfTI copy for DICOM or without links)."""
    from kidneyssl.io.volumes import write_volume

    if target.is_symlink() or target.exists():
        target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if kind != "nifti" or not source.name.endswith(".nii.gz"):
        write_volume(volume.array, volume.geometry, target)
        return
    try:
        os.symlink(source.resolve(), target)
    except OSError:
        shutil.copyfile(source, target)


def _recorded_outputs(out: Path) -> tuple[bool, set[str]]:
    """Whether ``out`` holds a ``locate.json``, and the files it records as written by ``locate``:
    every case's image and label, and (while running, or after a kill) the files being written."""
    try:
        info = json.loads((out / LOCATE_JSON).read_text())
    except (OSError, ValueError):
        return False, set()
    if not isinstance(info, dict) or not isinstance(info.get("cases"), dict):
        return False, set()
    recorded = {str(p) for p in info.get("writing") or [] if isinstance(p, str)}
    for record in info["cases"].values():
        if isinstance(record, dict):
            recorded |= {str(Path(record[k]).absolute()) for k in ("image", "label") if isinstance(record.get(k), str)}
    return True, recorded


def _own_outputs(out: Path) -> Callable[[Path], bool]:
    """Which existing files under ``out`` an earlier ``locate`` wrote (see :func:`_recorded_outputs`)."""
    has_json, recorded = _recorded_outputs(out)

    def is_own(path: Path) -> bool:
        if path.name == LOCATE_JSON and path.parent == out:
            return has_json
        return str(path.absolute()) in recorded

    return is_own


def _check_outputs(items: list[Any], input_path: Path, out: Path, force: bool) -> None:
    """Refuse an ``out`` that would write over, into or around a scan it reads, or (without
    ``force``) replace images/labels that no earlier ``locate`` into ``out`` wrote."""
    from kidneyssl.io.outputs import check_outputs

    outputs: list[Path] = [out / "images", out / "labels", out / LOCATE_JSON]
    for item in items:
        case_id = _case_id(item.name, item.output_id)
        outputs += [out / "labels" / f"{case_id}.nii.gz", out / "images" / f"{case_id}.nii.gz"]
    check_outputs(outputs, [input_path, *(p for it in items for p in it.paths)], is_own=_own_outputs(out),
                  force=force, inputs_name="the scans")


def locate_scans(model: Any, cfg: Any, input_path: str | Path, out_dir: str | Path, *,
                 device: str = "cpu", model_path: str | Path | None = None,
                 touched_cases: list[str] | None = None, force: bool = False) -> LocateSummary:
    """Locate the kidneys of every scan under ``input_path`` with ``model`` (see module docstring).

    Args:
        model: segmentation network in eval mode (as from :func:`kidneyssl.inference.load_model`).
        cfg: its :class:`~kidneyssl.config.ExperimentConfig` (preprocessing and inference).
        input_path: a NIfTI file, a KiTS-layout folder, a folder of NIfTI files or DICOM series.
        out_dir: output folder; it must not be, hold or lie inside the input. Outputs an earlier
            ``locate`` into it wrote (recorded in its ``locate.json``) are replaced; other
            existing files only with ``force``.
        model_path, touched_cases: the locator's checkpoint and the cases it was trained on
            (``None``: unknown), recorded in ``locate.json``.
        force: replace existing ``images/``/``labels/`` files that ``locate`` did not write.

    Returns:
        :class:`LocateSummary`; one bad scan is reported in ``failed`` (and leaves no image or
        label file) and the others go on.

    Raises:
        DataError: ``input_path`` holds no scans, or ``out_dir`` would write over, into or
            around one (see :func:`kidneyssl.io.outputs.check_outputs`); nothing is written.
    """
    from kidneyssl.inference import find_inputs, predict_volume, read_dicom_series
    from kidneyssl.io.atomic import atomic_write_json
    from kidneyssl.io.volumes import read_volume, write_mask
    from kidneyssl.progress import progress

    out = Path(out_dir).absolute()
    items = find_inputs(input_path)
    _check_outputs(items, Path(input_path), out, force)
    summary = LocateSummary(out)
    writing = _recorded_outputs(out)[1]  # an earlier (perhaps killed) run's, still ours

    def save(status: str) -> None:
        atomic_write_json(out / LOCATE_JSON, {
            "status": status,
            "model": None if model_path is None else str(Path(model_path).absolute()),
            "touched_cases": touched_cases,
            "input": str(Path(input_path).absolute()),
            "threshold": float(cfg.inference.threshold),
            "found": summary.found,
            "cases": summary.cases,
            "failed": summary.failed,
            **({"writing": sorted(writing)} if status == "running" else {}),
        })

    for item in progress(items, desc="locate", unit="case"):
        case_id = _case_id(item.name, item.output_id)
        start = time.perf_counter()
        label_path = out / "labels" / f"{case_id}.nii.gz"
        image_path = out / "images" / f"{case_id}.nii.gz"
        writing |= {str(label_path), str(image_path)}
        save("running")  # recorded before written: a rerun after a kill knows them as its own
        try:
            volume = read_dicom_series(item.path) if item.kind == "dicom" else read_volume(item.path)
            result = predict_volume(model, volume, cfg, device=device, keep_probabilities=True)
            write_mask(result.mask, label_path, like=result.geometry)
            _link_image(Path(item.path), image_path, volume, item.kind)
            record = {"input": str(Path(item.path).absolute()), "image": str(image_path),
                      "label": str(label_path),
                      **kidney_confidence(result.mask, _probabilities(result), volume.geometry.spacing),
                      "seconds": round(time.perf_counter() - start, 2)}
            summary.cases[case_id] = record
            log.debug("%s: %s", case_id, record)
        except (KidneySSLError, ValueError, OSError) as err:
            summary.failed[case_id] = describe_os_error(err) if isinstance(err, OSError) else str(err)
            log.error("%s: %s", case_id, summary.failed[case_id])
            for path in (label_path, image_path):  # a failed case leaves no final file
                if path.is_symlink() or path.exists():
                    path.unlink()
    save("finished")
    return summary


def locate_path(model_path: str | Path, input_path: str | Path, out_dir: str | Path, *,
                device: str = "cpu", threads: int | None = None, force: bool = False) -> LocateSummary:
    """:func:`locate_scans` with the model and config of a segmentation checkpoint.

    Raises:
        CheckpointError: the checkpoint cannot be used (nothing is written).
        DataError: see :func:`locate_scans` (checked before the checkpoint is loaded).
    """
    from kidneyssl.inference import find_inputs

    _check_outputs(find_inputs(input_path), Path(input_path), Path(out_dir).absolute(), force)
    from kidneyssl.inference import load_model
    from kidneyssl.io.checkpoint import load_checkpoint

    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    model, cfg = load_model(model_path, device)
    touched = load_checkpoint(model_path, kind="segmentation").get("touched_cases")
    return locate_scans(model, cfg, input_path, out_dir, device=device, model_path=model_path,
                        touched_cases=None if touched is None else [str(c) for c in touched], force=force)


def _probabilities(result: Any) -> Any:
    """The probabilities ``predict_volume(..., keep_probabilities=True)`` returned (never None)."""
    if result.probabilities is None:  # pragma: no cover - keep_probabilities=True always sets them
        raise RuntimeError("predict_volume returned no probabilities")
    return result.probabilities
