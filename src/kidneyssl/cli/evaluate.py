"""``kidneyssl evaluate``: score predicted masks against ground truth, KiTS19 style.

Pairs ``prediction_XXXXX.nii.gz`` files in ``--pred`` with ``case_XXXXX/segmentation.nii.gz`` in
``--gt`` (either folder may also be a flat folder of ``case_XXXXX.nii.gz`` / ``<stem>.nii.gz``
files, or a KiTS19-layout folder). The kidney target is label > 0 (kidney + tumour), as KiTS19's
official evaluation scores its "kidney" composite; ``--tumor`` adds the tumour Dice (label 2).
Spacing comes from each NIfTI header. A missing prediction is scored as an empty one and flagged;
a prediction whose shape or affine differs from its ground truth fails with a message naming both
files, the other cases go on, and the exit status is 1 if any case failed.
Metric computations live in :mod:`kidneyssl.metrics`; this module only pairs files and reports.
"""

from __future__ import annotations

import argparse
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["add_arguments", "run", "EvaluationResult", "evaluate_folders", "pair_cases"]

log = logging.getLogger(__name__)

_CASE_DIR = re.compile(r"^case_\d{5}$")
_NIFTI = (".nii.gz", ".nii")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of prediction_XXXXX.nii.gz (or <stem>.nii.gz) masks")
    parser.add_argument("--gt", required=True,
                        help="ground truth: KiTS19-layout folder (case_XXXXX/segmentation.nii.gz) or a folder "
                             "of NIfTI masks with matching stems")
    parser.add_argument("--out", default=None, help="per-case CSV (default: <pred>/evaluation.csv); "
                                                    "the Markdown summary goes beside it (.md)")
    parser.add_argument("--tumor", action="store_true",
                        help="also score the tumour (label 2) Dice; a binary prediction then scores 0 "
                             "wherever the ground truth has tumour")
    parser.add_argument("--bl-mode", choices=("surface", "perimeter"), default="surface",
                        help="boundary measure of BL%%: 3-D surface area (default) or summed axial perimeters")
    parser.add_argument("--missing-hd", choices=("nan", "max"), default="nan",
                        help="undefined HD/HD95 (empty masks) in the summary: counted and left out of the "
                             "mean (nan, default) or replaced by the image diagonal (max)")
    parser.add_argument("--affine-tol", type=float, default=1e-3,
                        help="largest affine difference (mm) accepted between prediction and ground truth")


def _stem(path: Path) -> str:
    for suffix in _NIFTI:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def _case_id(stem: str) -> str:
    """``prediction_00001`` -> ``case_00001``; ``prediction_foo`` -> ``foo``; other stems unchanged."""
    if stem.startswith("prediction_"):
        rest = stem[len("prediction_"):]
        return f"case_{rest}" if re.fullmatch(r"\d{5}", rest) else rest
    return stem


def _index_folder(folder: Path, role: str) -> dict[str, Path]:
    """Map case id -> mask file for a KiTS19-layout or flat folder."""
    from kidneyssl.errors import DataError

    if not folder.is_dir():
        raise DataError(folder, role, "a folder of NIfTI masks", "no such folder")
    found: dict[str, Path] = {}

    def add(case_id: str, path: Path) -> None:
        if case_id in found:
            raise DataError(folder, role, "one mask per case", f"two for {case_id}: {found[case_id].name}, {path.name}")
        found[case_id] = path

    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and _CASE_DIR.match(entry.name):
            for name in ("segmentation.nii.gz", "segmentation.nii"):
                if (entry / name).is_file():
                    add(entry.name, entry / name)
                    break
        elif entry.is_file() and entry.name.endswith(_NIFTI) and not entry.name.startswith((".", "probability_")):
            add(_case_id(_stem(entry)), entry)
    return found


def pair_cases(pred_dir: str | Path, gt_dir: str | Path) -> tuple[list[tuple[str, Path | None, Path]], list[Path]]:
    """Pair prediction files with ground-truth files by case id.

    Returns:
        ``(pairs, unmatched)``: ``(case_id, prediction or None, ground_truth)`` for every ground-truth
        case, sorted by id; and prediction files that have no ground truth.

    Raises:
        DataError: a folder is missing, holds two masks for one case, or ``gt_dir`` holds none.
    """
    from kidneyssl.errors import DataError

    gts = _index_folder(Path(gt_dir), "ground truth")
    preds = _index_folder(Path(pred_dir), "predictions")
    if not gts:
        raise DataError(gt_dir, "ground truth", "case_XXXXX/segmentation.nii.gz or *.nii.gz masks", "none")
    pairs = [(cid, preds.get(cid), gts[cid]) for cid in sorted(gts)]
    unmatched = [preds[cid] for cid in sorted(preds) if cid not in gts]
    return pairs, unmatched


@dataclass
class EvaluationResult:
    """Rows (one per scored case), the summary, failed cases (id -> message) and output paths."""

    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    failed: dict[str, str] = field(default_factory=dict)
    unmatched: list[Path] = field(default_factory=list)
    csv_path: Path | None = None
    md_path: Path | None = None
    markdown: str = ""


def _score_case(case_id: str, pred_path: Path | None, gt_path: Path, tumor: bool, bl_mode: str,
                affine_tol: float) -> dict[str, Any]:
    import numpy as np

    from kidneyssl.errors import DataError
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.metrics import compute_case_metrics, dice

    gt_vol = read_volume(gt_path)
    gt = np.asarray(gt_vol.array)
    if pred_path is None:
        pred = np.zeros(gt.shape, dtype=np.uint8)
    else:
        pred_vol = read_volume(pred_path)
        pred = np.asarray(pred_vol.array)
        if pred.shape != gt.shape:
            raise DataError(pred_path, "shape", f"{gt.shape} as {gt_path}", f"{pred.shape}")
        diff = float(np.abs(pred_vol.geometry.affine - gt_vol.geometry.affine).max())
        if diff > affine_tol:
            raise DataError(pred_path, "affine", f"the affine of {gt_path} (to {affine_tol:g} mm)",
                            f"a difference of {diff:.4g} mm")
    row: dict[str, Any] = {
        "case_id": case_id,
        "prediction": "" if pred_path is None else str(pred_path),
        "ground_truth": str(gt_path),
        "missing_prediction": pred_path is None,
    }
    row.update(compute_case_metrics(pred > 0, gt > 0, gt_vol.geometry.spacing, bl_mode=bl_mode))  # type: ignore[arg-type]
    if tumor:
        row["dice_tumor"] = dice(pred == 2, gt == 2)
    return row


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_csv: str | Path | None = None,
                     tumor: bool = False, bl_mode: str = "surface", missing_hd: str = "nan",
                     affine_tol: float = 1e-3) -> EvaluationResult:
    """Score every ground-truth case, write the per-case CSV and the Markdown summary beside it."""
    from kidneyssl.errors import KidneySSLError
    from kidneyssl.io.atomic import atomic_write_text
    from kidneyssl.metrics import summarize
    from kidneyssl.progress import progress
    from kidneyssl.reporting.tables import summary_markdown, write_case_table

    pairs, unmatched = pair_cases(pred_dir, gt_dir)
    for path in unmatched:
        log.warning("no ground truth for %s: not scored", path)
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    for case_id, pred_path, gt_path in progress(pairs, desc="evaluate", total=len(pairs), unit="case"):
        if pred_path is None:
            log.warning("%s: no prediction in %s: scored as an empty prediction", case_id, pred_dir)
        try:
            rows.append(_score_case(case_id, pred_path, gt_path, tumor, bl_mode, affine_tol))
        except KidneySSLError as err:
            failed[case_id] = str(err)
            log.error("%s: %s", case_id, err)
    summary = summarize(rows, missing_hd=missing_hd)  # type: ignore[arg-type]
    if tumor:
        summary["dice_tumor"] = summarize([{"dice": r["dice_tumor"]} for r in rows])["dice"]
    summary["n_missing_prediction"] = sum(r["missing_prediction"] for r in rows)
    summary["n_failed"] = len(failed)

    csv_path = Path(out_csv) if out_csv else Path(pred_dir) / "evaluation.csv"
    md_path = csv_path.with_suffix(".md")
    write_case_table(rows, csv_path)
    lines = [summary_markdown(summary, title=f"Evaluation of {pred_dir} against {gt_dir}").rstrip("\n"), ""]
    lines.append(f"Kidney = label > 0 (kidney + tumour); BL% from {bl_mode}; per-case values in {csv_path.name}.")
    if summary["n_missing_prediction"]:
        missing = [r["case_id"] for r in rows if r["missing_prediction"]]
        lines.append(f"Missing predictions, scored as empty: {', '.join(missing)}.")
    if failed:
        lines.append(f"Failed cases ({len(failed)}), not in the table:")
        lines += [f"- {cid}: {msg}" for cid, msg in failed.items()]
    if unmatched:
        lines.append(f"Predictions without ground truth (not scored): {', '.join(p.name for p in unmatched)}.")
    markdown = "\n".join(lines) + "\n"
    atomic_write_text(md_path, markdown)
    return EvaluationResult(rows, summary, failed, unmatched, csv_path, md_path, markdown)


def run(args: argparse.Namespace) -> int:
    result = evaluate_folders(args.pred, args.gt, args.out, tumor=args.tumor, bl_mode=args.bl_mode,
                              missing_hd=args.missing_hd, affine_tol=args.affine_tol)
    print(result.markdown, end="")
    log.info("wrote %s and %s", result.csv_path, result.md_path)
    if result.failed:
        log.error("%d case(s) failed: %s", len(result.failed), ", ".join(result.failed))
        return 1
    return 0
