"""``kidneyssl prepare --data DIR --out CACHE``: check and preprocess a dataset into a cache.

Runs the same checks as ``kidneyssl check`` on every case first (bad cases are reported, one line
each, and skipped; the others go on), then resamples, windows, normalises and pads in worker
processes. Cases already prepared with the same config are skipped, so a killed run is simply
re-run. Never writes into ``--data``. Exit status 1 if any case failed, else 0.
"""

from __future__ import annotations

import argparse

from kidneyssl.cli._common import add_config_arguments, add_dataset_arguments, positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="dataset folder (KiTS19/KiTS23 case folders, nnU-Net raw, pairs; read only)")
    parser.add_argument("--out", required=True, help="cache folder to write (outside --data)")
    parser.add_argument("--workers", type=positive_int, default=2, help="worker processes (default: 2)")
    parser.add_argument("--force", action="store_true",
                        help="redo every case, and replace a cache made with another config")
    add_config_arguments(parser)
    add_dataset_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.cli._common import dataset_options, remedy_flags, resolve_config
    from kidneyssl.data.prepare import prepare_dataset

    cfg = resolve_config(args).preprocess
    summary = prepare_dataset(args.data, args.out, cfg, workers=args.workers, force=args.force,
                              **dataset_options(args))
    for _case_id, reasons in sorted(summary.failed.items()):
        print(" | ".join(reasons), flush=True)
    if summary.remedy:
        print(f"options that may help: {', '.join(remedy_flags(summary.remedy))}", flush=True)
    print(f"prepared {args.data} -> {args.out}: {summary}")
    return 1 if summary.failed else 0
