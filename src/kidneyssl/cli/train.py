"""``kidneyssl train --cache CACHE --out RUN --init scratch|PRETRAIN_CKPT``: segmentation training."""

from __future__ import annotations

import argparse
import logging
import time

from kidneyssl.cli._common import (
    add_config_arguments,
    log_run_summary,
    plan_options,
    positive_int,
    resolve_config,
)
from kidneyssl.cli.pretrain import add_run_arguments

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", default=None, help="prepared cache (kidneyssl prepare); optional with --resume")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--init", default="scratch",
                        help="'scratch' (MwoS) or a pretraining checkpoint (pretrain RUN/best.pt) for MwS")
    parser.add_argument("--init-parts", choices=("encoder", "encoder+decoder"), default="encoder",
                        help="what --init gives: the encoder (the paper's MwS, default) or encoder and decoder "
                             "(methods that pretrain a decoder: mae, genesis)")
    parser.add_argument("--split", default=None,
                        help="split.json to use, e.g. the pretraining run's (MwS and MwoS must share one)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, metavar="K",
                        help="half volumes per optimiser step per process: sets train.batch_size (the global "
                             "batch) to K x processes (default: train.batch_size, the paper's 1)")
    parser.add_argument("--allow-init-overlap", action="store_true",
                        help="experts only: accept a siamese --init checkpoint that was trained on cases this "
                             "split holds out for validation/test (recorded in run.json)")
    add_run_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.runfolder import RunFolder

    t0 = time.perf_counter()
    from kidneyssl.io.outputs import check_outputs
    from kidneyssl.reporting.figures import refresh_history_plot

    cache, init, split = args.cache, args.init, args.split
    # --force empties the run files of --out: never where the inputs live (the --init checkpoint
    # and --split of a pretraining run are its best.pt and split.json)
    check_outputs([args.out], [cache, None if init == "scratch" else init, split], what="--out",
                  inputs_name="--cache, --init and --split")
    unstarted = RunFolder(args.out).unstarted_inputs("segmentation") if args.resume else None
    if unstarted:  # stopped before its first checkpoint: start again with what it was given
        cache, init, split = cache or unstarted["cache"], unstarted["init"], unstarted["split"]
    result = train_segmentation(cache, args.out, resolve_config(args), init=init, init_parts=args.init_parts,
                                on_epoch=refresh_history_plot, split_file=split, resume=args.resume,
                                force=args.force, extend_epochs=args.extend_epochs, device=args.device,
                                accumulate=args.grad_accum, allow_init_overlap=args.allow_init_overlap,
                                plan=plan_options(args), allow_world_size_change=args.allow_world_size_change)
    if args.dry_run:
        return 0
    log.info("training done: best val Dice %.4f at epoch %d, last %.4f; checkpoints in %s",
             result.best_dice, result.best_epoch + 1, result.last_dice, result.run_dir)
    log_run_summary(result.run_dir, {"train": time.perf_counter() - t0},
                    {"best epoch": result.best_epoch + 1, "best val Dice": result.best_dice,
                     "last val Dice": result.last_dice})
    return 0
