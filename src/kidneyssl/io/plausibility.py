"""Plausibility checks for scans where they enter (``predict``, ``check``, ``prepare``).

A file can be perfectly readable and still be nonsense for a kidney CT model: a 4 x 4 x 4 volume,
0.01 mm voxels, an all-zero or constant image, intensities that are not Hounsfield units (a mask,
an MR, 8-bit display values, raw scanner values without the rescale intercept), or an oblique
grid that preprocessing snaps to the nearest axes. Each check gives a :class:`~kidneyssl.errors.
DataError` naming the file, what was expected and what was found.

``predict`` refuses a scan with an ``error`` finding (the others go on) and logs ``warning`` ones;
``check`` and ``prepare`` log every finding as a warning (the dataset is the user's to judge) and
go on. :func:`check_resampled_size` refuses to allocate a resampled array beyond a fixed limit,
whatever the header says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

from kidneyssl.errors import DataError, KidneySSLError
from kidneyssl.io.geometry import Volume, obliquity_deg

__all__ = [
    "Finding",
    "scan_findings",
    "check_scan",
    "check_resampled_size",
    "MIN_SPACING_MM",
    "MAX_SPACING_MM",
    "MIN_EXTENT_MM",
    "MIN_MAX_HU",
    "BODY_HU",
    "MIN_BODY_FRACTION",
    "OBLIQUE_WARN_DEG",
    "MAX_RESAMPLED_BYTES",
]

log = logging.getLogger(__name__)

#: Voxel sizes outside this range are not a clinical CT (or the header is wrong).
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0
#: A kidney is about 100-130 x 50-70 x 30-50 mm: a smaller field of view cannot hold one.
MIN_EXTENT_MM = 30.0
#: Contrast-enhanced kidneys and bone lie above 100 HU; a CT in HU has a maximum above it.
MIN_MAX_HU = 100.0
#: Voxels above this are body (or table), not air; at least this fraction of them is expected.
BODY_HU = -500.0
MIN_BODY_FRACTION = 0.01
#: Warn when preprocessing snaps voxel axes by more than this angle to the nearest world axes.
OBLIQUE_WARN_DEG = 0.01
#: Refuse to resample into a larger array (float32 bytes) than this: 4 GiB.
MAX_RESAMPLED_BYTES = 4 * 2**30


@dataclass(frozen=True)
class Finding:
    """One plausibility problem: ``error`` (predict refuses the scan) or ``warning``."""

    severity: Literal["error", "warning"]
    problem: DataError

    def __str__(self) -> str:
        return str(self.problem)


def _mm(values: Sequence[float]) -> str:
    return " x ".join(f"{v:.3g}" for v in values) + " mm"


def scan_findings(volume: Volume, path: str | Path) -> list[Finding]:
    """Every plausibility problem of a CT scan as read from ``path`` (empty when plausible).

    Errors: spacing outside [MIN_SPACING_MM, MAX_SPACING_MM] (or not finite), a field of view
    under MIN_EXTENT_MM along an axis, a constant volume, a maximum under MIN_MAX_HU, no negative
    value (no air or fat: not HU), fewer than MIN_BODY_FRACTION of voxels above BODY_HU.
    Warning: voxel axes oblique by more than OBLIQUE_WARN_DEG degrees.
    """
    path = Path(path)
    findings: list[Finding] = []
    geometry = volume.geometry
    spacing = geometry.spacing
    if not all(np.isfinite(s) and MIN_SPACING_MM <= s <= MAX_SPACING_MM for s in spacing):
        findings.append(Finding("error", DataError(
            path, "spacing", f"voxel sizes from {MIN_SPACING_MM:g} to {MAX_SPACING_MM:g} mm",
            _mm(spacing), hint="check the header's voxel size (pixdim / affine)")))
    else:
        extent = [n * s for n, s in zip(geometry.shape, spacing)]
        if min(extent) < MIN_EXTENT_MM:
            findings.append(Finding("error", DataError(
                path, "field of view", f"at least {MIN_EXTENT_MM:g} mm along every axis (a kidney "
                "is larger)", f"{_mm(extent)} ({'x'.join(map(str, geometry.shape))} voxels)")))
    angle = obliquity_deg(geometry.affine)
    if angle > OBLIQUE_WARN_DEG:
        findings.append(Finding("warning", DataError(
            path, "orientation", "voxel axes along the patient axes", f"axes oblique by "
            f"{angle:.2f} degrees", hint="preprocessing snaps them to the nearest axes; the mask "
            "is written on the input grid")))
    array = volume.array
    if array.size == 0:
        return findings
    lo, hi = float(np.min(array)), float(np.max(array))
    if lo == hi:
        findings.append(Finding("error", DataError(
            path, "intensities", "a CT image", f"a constant volume (every voxel {lo:g})")))
        return findings
    if hi < MIN_MAX_HU:
        findings.append(Finding("error", DataError(
            path, "intensities", f"a CT in Hounsfield units (maximum >= {MIN_MAX_HU:g} HU)",
            f"values {lo:g} to {hi:g}", hint="probably not a CT in HU: a mask, an MR, or "
            "rescaled values?")))
    elif lo >= 0:
        findings.append(Finding("error", DataError(
            path, "intensities", "a CT in Hounsfield units (air and fat below 0 HU)",
            f"values {lo:g} to {hi:g}", hint="8-bit display values, or raw scanner values "
            "without the rescale intercept (scl_inter)?")))
    step = max(1, int(round((array.size / 2e6) ** (1 / 3))))  # ~2 M voxels are plenty
    sample = array[::step, ::step, ::step]
    body = float(np.count_nonzero(sample > BODY_HU)) / sample.size
    if body < MIN_BODY_FRACTION:
        findings.append(Finding("error", DataError(
            path, "body", f"body voxels (above {BODY_HU:g} HU) in at least "
            f"{MIN_BODY_FRACTION:.0%} of the volume", f"{body:.2%}",
            hint="an empty scan (air only)?")))
    return findings


def check_scan(volume: Volume, path: str | Path, refuse: bool = True) -> list[Finding]:
    """Run :func:`scan_findings`; log warnings; raise the first error (``refuse``) or log it.

    Returns:
        the findings (after logging them).

    Raises:
        DataError: ``refuse`` and an ``error`` finding; its message names the file.
    """
    findings = scan_findings(volume, path)
    errors = [f for f in findings if f.severity == "error"]
    if refuse and errors:
        for finding in findings:
            if finding.severity == "warning":
                log.warning("%s", finding)
        raise errors[0].problem
    for finding in findings:
        log.warning("%s%s", finding, " (implausible for a kidney CT)" if finding.severity == "error" else "")
    return findings


def check_resampled_size(shape: Sequence[int], spacing_mm: Sequence[float],
                         out_shape: Sequence[int], itemsize: int = 4,
                         limit_bytes: int = MAX_RESAMPLED_BYTES) -> None:
    """Refuse to resample ``shape`` (at ``spacing_mm``) into ``out_shape`` when that array would
    exceed ``limit_bytes`` (computed before anything is allocated).

    Raises:
        KidneySSLError: the resampled array would be too large; the message gives both shapes.
    """
    n = 1
    for v in out_shape:
        n *= int(v)
    nbytes = n * int(itemsize)
    if nbytes > limit_bytes:
        raise KidneySSLError(
            f"resampling {'x'.join(map(str, shape))} voxels of {_mm(spacing_mm)} would make a "
            f"{'x'.join(map(str, out_shape))} array ({nbytes / 2**30:.3g} GiB > "
            f"{limit_bytes / 2**30:.3g} GiB limit): check the voxel size in the header")
