"""``kidneyssl experiment --data DIR --out RUN``: the paper's MwS vs MwoS comparison with report."""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import add_config_arguments, positive_int, resolve_config

__all__ = ["add_arguments", "run", "print_result"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="KiTS19-layout dataset folder")
    parser.add_argument("--out", required=True, help="experiment folder (re-run to continue it)")
    parser.add_argument("--cache", default=None, help="cache folder (default: OUT/cache)")
    parser.add_argument("--force", action="store_true", help="start over in an OUT that holds something else")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=positive_int, default=None, help="worker processes for prepare")
    add_config_arguments(parser)


def print_result(result) -> None:  # noqa: ANN001 - ExperimentResult, imported lazily
    """Print where the report is and the headline numbers (stdout)."""
    print(f"report: {result.report}")
    for name, value in result.final_val_dice.items():
        stats = result.summary.get(name, {}).get("dice", {})
        print(f"{name}: final validation Dice (preprocessed grid) {value:.4f}; "
              f"Table 1 Dice (original grid) {stats.get('mean', float('nan')):.4f} "
              f"+- {stats.get('sd', float('nan')):.4f}")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.training.experiment import run_experiment

    result = run_experiment(args.data, args.out, resolve_config(args), cache_dir=args.cache, force=args.force,
                            device=args.device, workers=args.workers)
    print_result(result)
    return 0
