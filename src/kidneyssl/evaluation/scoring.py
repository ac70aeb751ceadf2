"""Score predicted kidney masks against ground truth, KiTS style: per-case table and summary.

The kidney target of the ground truth follows a :class:`~kidneyssl.io.labels.LabelPolicy`:
KiTS19 labels {0, 1, 2} (kidney = 1, 2), KiTS21/23 {0, 1, 2, 3} (kidney = 1, 2, 3), an nnU-Net
``dataset.json``'s kidney labels, or an explicit map (``kidney=2,3``). Predictions are binary
masks or KiTS labels {0, 1, 2, 3} (kidney = non-zero). Any other value (a multi-organ map, a
probability map, label 5) fails that case with a message naming the file and the values found;
nothing is scored as kidney silently. Spacing comes from each NIfTI header. A missing prediction
is scored as an empty one and flagged; a prediction whose shape or affine differs from its ground
truth fails with a message naming both files, and the other cases go on.
Metric computations live in :mod:`kidneyssl.metrics`; this module pairs, checks and reports.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kidneyssl.errors import DataError, KidneySSLError
from kidneyssl.evaluation.pairing import pair_cases
from kidneyssl.io.labels import PREDICTION_POLICY, LabelPolicy

__all__ = ["EvaluationResult", "evaluate_folders", "score_case", "ground_truth_policy"]

log = logging.getLogger(__name__)


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
    policy: LabelPolicy | None = None
    #: remedies the failures name (:data:`kidneyssl.errors.REMEDIES`), e.g. ``labels``
    remedy: tuple[str, ...] = ()


def ground_truth_policy(gt_dir: str | Path, data_format: str | None = None,
                        kidney_labels: tuple[int, ...] | None = None,
                        labels: LabelPolicy | None = None) -> LabelPolicy:
    """The label policy of the ground truth in ``gt_dir``.

    ``labels`` (an explicit map) wins; else ``data_format`` (``None``: detected; a folder of
    masks only reads as KiTS19) gives the format's policy (nnU-Net: from ``dataset.json``), with
    ``kidney_labels`` replacing its kidney labels.
    """
    if labels is not None:
        return labels
    from kidneyssl.io.datasets import default_policy, detect_format, open_dataset

    if data_format is None:
        try:
            data_format = detect_format(gt_dir)
        except DataError:
            data_format = "kits19"
    if data_format == "nnunet":
        return open_dataset(gt_dir, "nnunet", kidney_labels).policy
    return default_policy(data_format).with_kidney_labels(kidney_labels)


def _read_mask(path: Path, policy: LabelPolicy, role: str) -> tuple[np.ndarray, Any]:
    from kidneyssl.io.volumes import read_volume

    vol = read_volume(path)
    array = np.asarray(vol.array)
    errors = policy.check(path, array, need_kidney=False)
    if errors:
        err = errors[0]
        raise DataError(path, f"{role} labels", err.expected, err.found, hint=err.hint, remedy=err.remedy)
    return array, vol


def score_case(case_id: str, pred_path: Path | None, gt_path: Path, policy: LabelPolicy,
               tumor: bool = False, bl_mode: str = "surface", affine_tol: float = 1e-3) -> dict[str, Any]:
    """Metrics of one case (see :func:`kidneyssl.metrics.compute_case_metrics`).

    Raises:
        DataError: a label value the policy does not allow, or shape/affine mismatch.
    """
    from kidneyssl.metrics import compute_case_metrics, dice

    gt, gt_vol = _read_mask(gt_path, policy, "ground truth")
    if pred_path is None:
        pred = np.zeros(gt.shape, dtype=np.uint8)
    else:
        pred, pred_vol = _read_mask(pred_path, PREDICTION_POLICY, "prediction")
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
    row.update(compute_case_metrics(pred > 0, policy.target(gt), gt_vol.geometry.spacing,
                                    bl_mode=bl_mode))  # type: ignore[arg-type]
    if tumor:
        row["dice_tumor"] = dice(pred == PREDICTION_POLICY.tumor, gt == policy.tumor)
    return row


def _is_own_output(path: Path) -> bool:
    """An earlier evaluation's CSV (its header starts with ``case_id``) or Markdown summary."""
    from kidneyssl.io.outputs import first_line_starts_with

    if path.suffix == ".md":
        return first_line_starts_with(path, "## Evaluation of ")
    return first_line_starts_with(path, "case_id")


def evaluate_folders(pred_dir: str | Path, gt_dir: str | Path, out_csv: str | Path | None = None,
                     tumor: bool = False, bl_mode: str = "surface", missing_hd: str = "nan",
                     affine_tol: float = 1e-3, policy: LabelPolicy | None = None,
                     force: bool = False) -> EvaluationResult:
    """Score every ground-truth case, write the per-case CSV and the Markdown summary beside it.

    Args:
        pred_dir, gt_dir: see :func:`kidneyssl.evaluation.pair_cases`.
        out_csv: per-case CSV (default ``<pred_dir>/evaluation.csv``); the summary goes beside
            it as ``.md``.
        tumor: also score the tumour Dice (prediction label 2 vs the policy's tumour label).
        policy: ground-truth label policy (default: :func:`ground_truth_policy` of ``gt_dir``).
        force: replace an existing file at ``out_csv`` (or its ``.md``) that is not an earlier
            evaluation's output. A mask this evaluation reads is never replaced.

    Cases without a prediction are scored as empty, counted in the summary and logged.

    Raises:
        DataError: folders missing or holding no ground truth; no prediction matches any
            ground-truth case; or the outputs would replace an input (or, without ``force``, a
            file evaluate did not write). Nothing is written then.
        KidneySSLError: ``tumor`` with a policy that has no tumour label.
    """
    from kidneyssl.io.atomic import atomic_write_text
    from kidneyssl.metrics import summarize
    from kidneyssl.progress import progress
    from kidneyssl.reporting.tables import summary_markdown, write_case_table

    policy = policy or ground_truth_policy(gt_dir)
    if tumor and policy.tumor is None:
        raise KidneySSLError(f"{gt_dir}: no tumour label in the ground-truth labels "
                             f"(kidney = {list(policy.kidney)}); name it, e.g. tumor=2, or drop the tumour Dice")
    from kidneyssl.io.outputs import check_outputs

    pairs, unmatched = pair_cases(pred_dir, gt_dir)
    csv_path = Path(out_csv) if out_csv else Path(pred_dir) / "evaluation.csv"
    md_path = csv_path.with_suffix(".md")
    read = [p for _, pred, gt in pairs for p in (pred, gt) if p is not None] + list(unmatched)
    check_outputs([csv_path, md_path], read, is_own=_is_own_output, force=force, inputs_name="the masks")
    n_missing = sum(pred is None for _, pred, _ in pairs)
    if n_missing == len(pairs):
        from kidneyssl.io.paths import describe_folder

        raise DataError(pred_dir, "predictions", f"masks named after the {len(pairs)} ground-truth case(s) "
                        f"(e.g. prediction_{pairs[0][0].removeprefix('case_')}.nii.gz or {pairs[0][0]}.nii.gz)",
                        f"none of them ({len(unmatched)} mask(s) without ground truth)" if unmatched else "none",
                        hint=describe_folder(pred_dir))
    if n_missing:
        log.warning("%d of %d ground-truth case(s) have no prediction in %s: scored as empty predictions",
                    n_missing, len(pairs), Path(pred_dir).absolute())
    if unmatched:
        log.warning("%d prediction(s) without ground truth, not scored: %s", len(unmatched),
                    ", ".join(p.name for p in unmatched[:5]) + (", ..." if len(unmatched) > 5 else ""))
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    remedy: set[str] = set()
    for case_id, pred_path, gt_path in progress(pairs, desc="evaluate", total=len(pairs), unit="case"):
        if pred_path is None:
            log.warning("%s: no prediction in %s: scored as an empty prediction", case_id, pred_dir)
        try:
            rows.append(score_case(case_id, pred_path, gt_path, policy, tumor, bl_mode, affine_tol))
        except KidneySSLError as err:
            failed[case_id] = str(err)
            remedy.update(err.remedy)
            log.error("%s: %s", case_id, err)
    summary = summarize(rows, missing_hd=missing_hd)  # type: ignore[arg-type]
    if tumor:
        summary["dice_tumor"] = summarize([{"dice": r["dice_tumor"]} for r in rows])["dice"]
    summary["n_missing_prediction"] = sum(r["missing_prediction"] for r in rows)
    summary["n_failed"] = len(failed)

    write_case_table(rows, csv_path)
    lines = [summary_markdown(summary, title=f"Evaluation of {pred_dir} against {gt_dir}").rstrip("\n"), ""]
    kidney = ", ".join(map(str, policy.kidney))
    lines.append(f"Kidney = ground-truth label {kidney} ({policy.name} labels), prediction > 0; "
                 f"BL% from {bl_mode}; per-case values in {csv_path.name}.")
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
    return EvaluationResult(rows, summary, failed, unmatched, csv_path, md_path, markdown, policy,
                            tuple(sorted(remedy)))
