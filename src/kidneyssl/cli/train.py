"""``kidneyssl train --cache CACHE --out RUN --init scratch|PRETRAIN_CKPT``: segmentation training."""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import add_config_arguments, positive_int, resolve_config
from kidneyssl.cli.pretrain import add_run_arguments

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", default=None, help="prepared cache (kidneyssl prepare); optional with --resume")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--init", default="scratch",
                        help="'scratch' (MwoS) or a siamese checkpoint (pretrain RUN/best.pt) for MwS")
    parser.add_argument("--split", default=None,
                        help="split.json to use, e.g. the pretraining run's (MwS and MwoS must share one)")
    parser.add_argument("--grad-accum", type=positive_int, default=1, metavar="K",
                        help="half volumes per optimiser step per process (default 1, the paper's batch size)")
    add_run_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.runfolder import RunFolder

    cache, init, split = args.cache, args.init, args.split
    unstarted = RunFolder(args.out).unstarted_inputs("segmentation") if args.resume else None
    if unstarted:  # stopped before its first checkpoint: start again with what it was given
        cache, init, split = cache or unstarted["cache"], unstarted["init"], unstarted["split"]
    result = train_segmentation(cache, args.out, resolve_config(args), init=init,
                                split_file=split, resume=args.resume, force=args.force,
                                extend_epochs=args.extend_epochs, device=args.device,
                                accumulate=args.grad_accum)
    log.info("training done: best val Dice %.4f at epoch %d, last %.4f; checkpoints in %s",
             result.best_dice, result.best_epoch + 1, result.last_dice, result.run_dir)
    return 0
