"""``kidneyssl check --data DIR``: validate a KiTS19-layout dataset.

Prints one line per bad case, ``file: field: expected X, found Y`` (further problems of the same
case follow on that line after `` | ``), then a summary line. Exit status 1 if any case is bad,
0 otherwise (2 when the folder itself is unusable).
"""

from __future__ import annotations

import argparse

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder of case_XXXXX/ folders")
    parser.add_argument("--masks-only", action="store_true",
                        help="do not require imaging.nii.gz (e.g. a folder of segmentations only)")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.io.kits19 import check_case, find_cases
    from kidneyssl.progress import progress

    cases = find_cases(args.data)
    bad = 0
    for case in progress(cases, desc="check", unit="case"):
        errors = check_case(case, require_imaging=not args.masks_only)
        if errors:
            bad += 1
            print(" | ".join(str(e) for e in errors), flush=True)
    print(f"checked {len(cases)} case(s) in {args.data}: {len(cases) - bad} ok, {bad} bad")
    return 1 if bad else 0
