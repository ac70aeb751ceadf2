"""``kidneyssl evaluate``: score predicted masks against ground truth (see :mod:`kidneyssl.evaluation`).

Exit status 1 if any case failed (e.g. a label value the ground-truth labels do not allow, or a
shape/affine mismatch: the message names the file), 2 on unusable folders or options.
"""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import add_dataset_arguments, dataset_options

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pred", required=True, help="folder of prediction_XXXXX.nii.gz (or <stem>.nii.gz) masks")
    parser.add_argument("--gt", required=True, help="ground truth: KiTS19/KiTS23 case folders, nnU-Net raw "
                        "(labelsTr/), pairs (labels/) or a folder of NIfTI masks with matching stems")
    parser.add_argument("--out", default=None, help="per-case CSV (default: <pred>/evaluation.csv); "
                                                    "the Markdown summary goes beside it (.md)")
    parser.add_argument("--force", action="store_true",
                        help="replace an existing --out file that is not an earlier evaluation's (never a mask "
                             "it reads)")
    parser.add_argument("--tumor", action="store_true", help="also score the tumour Dice (prediction label 2); "
                        "a binary prediction then scores 0 wherever the ground truth has tumour")
    parser.add_argument("--labels", action="append", default=None, metavar="kidney=L,..[;tumor=L]",
                        help="explicit ground-truth label map (other labels are background), e.g. "
                             "kidney=2,3 for a multi-organ map; replaces --format/--kidney-labels")
    parser.add_argument("--bl-mode", choices=("surface", "perimeter"), default="surface",
                        help="boundary measure of BL%%: 3-D surface area (default) or summed axial perimeters")
    parser.add_argument("--missing-hd", choices=("nan", "max"), default="nan",
                        help="undefined HD/HD95 (empty masks) in the summary: counted and left out of the "
                             "mean (nan, default) or replaced by the image diagonal (max)")
    parser.add_argument("--affine-tol", type=float, default=1e-3,
                        help="largest affine difference (mm) accepted between prediction and ground truth")
    add_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.cli._common import remedy_flags
    from kidneyssl.errors import KidneySSLError
    from kidneyssl.evaluation import evaluate_folders, ground_truth_policy
    from kidneyssl.io.labels import parse_label_map

    try:
        explicit = parse_label_map(args.labels) if args.labels else None
    except ValueError as err:
        raise KidneySSLError(f"--labels: {err}") from None
    policy = ground_truth_policy(args.gt, labels=explicit, **dataset_options(args))
    result = evaluate_folders(args.pred, args.gt, args.out, tumor=args.tumor, bl_mode=args.bl_mode,
                              missing_hd=args.missing_hd, affine_tol=args.affine_tol, policy=policy,
                              force=args.force)
    print(result.markdown, end="")
    log.info("wrote %s and %s", result.csv_path, result.md_path)
    if result.failed:
        log.error("%d case(s) failed: %s", len(result.failed), ", ".join(result.failed))
        if result.remedy:
            log.error("options that may help: %s", ", ".join(remedy_flags(result.remedy)))
        return 1
    return 0
