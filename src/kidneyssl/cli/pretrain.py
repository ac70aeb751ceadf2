"""``kidneyssl pretrain --cache CACHE --out RUN``: siamese left/right kidney proxy-task training."""

from __future__ import annotations

import argparse
import logging
import time

from kidneyssl.cli._common import (
    add_config_arguments,
    add_plan_arguments,
    add_unlabeled_arguments,
    log_run_summary,
    plan_options,
    resolve_config,
    unlabeled_overrides,
)

__all__ = ["add_arguments", "run", "add_run_arguments"]

log = logging.getLogger(__name__)


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options every training command shares: resume/force/extend, device, the plan."""
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run in --out exactly (uses its saved config)")
    parser.add_argument("--force", action="store_true", help="start over in an --out that holds a run")
    parser.add_argument("--extend-epochs", type=int, default=0, metavar="N",
                        help="continue a FINISHED run with N more epochs (schedule over the new total)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    add_plan_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", default=None, help="prepared cache (kidneyssl prepare); optional with --resume")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--split", default=None, help="split.json to use (default: seeded 80/20 split)")
    add_unlabeled_arguments(parser, "scans without masks for extra proxy pairs: a 'kidneyssl locate' output, "
                                    "or any scans with --locator")
    parser.add_argument("--locator", default=None, metavar="SEG_CKPT",
                        help="segmentation checkpoint that locates the kidneys of --unlabeled first (into "
                             "OUT/located)")
    parser.add_argument("--allow-locator-overlap", action="store_true",
                        help="accept a locator trained on validation/test cases of this split (recorded)")
    add_run_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.training.pretrain import pretrain_siamese
    from kidneyssl.training.runfolder import RunFolder

    t0 = time.perf_counter()
    from kidneyssl.reporting.figures import refresh_history_plot

    if args.locator is not None and args.unlabeled is None:
        log.error("kidneyssl pretrain: --locator needs --unlabeled DIR (the scans to locate)")
        return 2
    args.overrides = list(getattr(args, "overrides", None) or []) + unlabeled_overrides(args)
    from kidneyssl.io.outputs import check_outputs

    cache, split = args.cache, args.split
    check_outputs([args.out], [cache, split, args.unlabeled, args.locator], what="--out",
                  inputs_name="--cache, --split, --unlabeled and --locator")
    unstarted = RunFolder(args.out).unstarted_inputs("siamese") if args.resume else None
    if unstarted:  # stopped before its first checkpoint: start again with what it was given
        cache, split = cache or unstarted["cache"], unstarted["split"]
    result = pretrain_siamese(cache, args.out, resolve_config(args), split_file=split,
                              on_epoch=refresh_history_plot,
                              resume=args.resume, force=args.force, extend_epochs=args.extend_epochs,
                              device=args.device, plan=plan_options(args), unlabeled=args.unlabeled,
                              locator=args.locator, allow_locator_overlap=args.allow_locator_overlap)
    if args.dry_run:
        return 0
    log.info("pretraining done: best epoch %d (val loss %.4f), last val pair accuracy %.3f; checkpoints in %s",
             result.best_epoch + 1, result.best_val_loss, result.last_val_accuracy, result.run_dir)
    headline: dict[str, object] = {"best epoch": result.best_epoch + 1, "best val loss": result.best_val_loss,
                "last val pair accuracy": result.last_val_accuracy}
    unl = (RunFolder(result.run_dir).info() or {}).get("unlabeled")
    if unl:
        headline["unlabeled scans used"] = f"{unl['used']} of {unl['scans']} ({unl['kidneys']['right']} right, " \
                                           f"{unl['kidneys']['left']} left kidneys)"
    log_run_summary(result.run_dir, {"pretrain": time.perf_counter() - t0}, headline)
    return 0
