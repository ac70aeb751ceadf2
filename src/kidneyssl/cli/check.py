"""``kidneyssl check --data DIR``: validate a dataset (KiTS19, KiTS21/23, nnU-Net raw, pairs).

Prints one line per bad case, ``file: field: expected X, found Y`` (further problems of the same
case follow on that line after `` | ``), one line per folder or file that was skipped and why,
a line counting the cases without a label (if any), then a summary line. Exit status 1 if any case is bad, 0 otherwise (2 when the folder itself is
unusable).
"""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import add_dataset_arguments, dataset_options, describe_error

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (case_XXXXX/ folders, nnU-Net raw, pairs)")
    parser.add_argument("--masks-only", action="store_true",
                        help="do not require imaging.nii.gz (e.g. a folder of segmentations only)")
    add_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.io.datasets import open_dataset
    from kidneyssl.io.kits19 import check_case
    from kidneyssl.progress import progress

    dataset = open_dataset(args.data, **dataset_options(args))
    cases = dataset.cases
    logging.getLogger("kidneyssl.cli.check").info(
        "%s: %s format, kidney = label %s", dataset.root, dataset.format,
        ", ".join(map(str, dataset.policy.kidney)))
    for line in dataset.skipped:
        print(line, flush=True)
    bad = 0
    for case in progress(cases, desc="check", unit="case"):
        errors = check_case(case, require_imaging=not args.masks_only, policy=dataset.policy)
        if errors:
            bad += 1
            print(" | ".join(describe_error(e) for e in errors), flush=True)
    skipped = f", {len(dataset.skipped)} skipped" if dataset.skipped else ""
    unlabeled = [c.case_id for c in cases if c.segmentation is None and c.imaging is not None]
    if unlabeled and not args.masks_only:
        shown = ", ".join(unlabeled[:5]) + (", ..." if len(unlabeled) > 5 else "")
        print(f"{len(unlabeled)} case(s) without a label ({shown}): no label file, so not used to train or score",
              flush=True)
    print(f"checked {len(cases)} case(s) in {args.data}: {len(cases) - bad} ok, {bad} bad{skipped}")
    return 1 if bad else 0
