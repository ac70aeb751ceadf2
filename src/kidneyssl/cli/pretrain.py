"""``kidneyssl pretrain --cache CACHE --out RUN [--method side|mae|genesis]``: pretraining (default: the
paper's left/right kidney proxy task)."""

from __future__ import annotations

import argparse
import logging
import time

from kidneyssl.cli._common import (
    add_config_arguments,
    add_network_arguments,
    add_plan_arguments,
    add_unlabeled_arguments,
    log_run_summary,
    network_overrides,
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
    parser.add_argument("--allow-world-size-change", action="store_true",
                        help="with --resume: continue on another number of processes than the run was saved by")
    add_plan_arguments(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from kidneyssl.training.tasks.registry import DEFAULT_METHOD, PRETRAINING_METHODS

    parser.add_argument("--method", default=DEFAULT_METHOD, choices=list(PRETRAINING_METHODS),
                        help="pretraining method: side (the paper's left/right proxy, default; input set by "
                             "--set pretrain.proxy_input=region|masked), mae (masked image modelling), genesis "
                             "(Models Genesis restoration)")
    parser.add_argument("--proxy-input", choices=("region", "masked"), default=None,
                        help="side proxy's input (sets pretrain.proxy_input)")
    parser.add_argument("--cache", default=None, help="prepared cache (kidneyssl prepare); optional with --resume")
    parser.add_argument("--nnunet-preprocessed", default=None, metavar="DIR",
                        help="instead of --cache: nnU-Net's preprocessed dataset (nnUNet_preprocessed/DatasetXXX); "
                             "reads its --plans/--configuration cases, pretrains the plans' network, splits by "
                             "its splits_final.json --fold")
    add_network_arguments(parser)
    parser.add_argument("--fold", type=int, default=None,
                        help="with --nnunet-preprocessed: nnU-Net's fold whose training cases are read (sets "
                             "train.nnunet_fold, default 0); its validation cases are never read")
    parser.add_argument("--out", required=True, help="run folder")
    parser.add_argument("--split", default=None, help="split.json to use (default: seeded 80/20 split)")
    add_unlabeled_arguments(parser, "scans without masks: for side, extra proxy pairs (a 'kidneyssl locate' "
                                    "output, or any scans with --locator); for mae and genesis, extra training "
                                    "images (any scans 'kidneyssl predict' reads, or a dataset folder)")
    parser.add_argument("--locator", default=None, metavar="SEG_CKPT",
                        help="segmentation checkpoint that locates the kidneys of --unlabeled first (into "
                             "OUT/located)")
    parser.add_argument("--allow-locator-overlap", action="store_true",
                        help="accept a locator trained on validation/test cases of this split (recorded)")
    add_run_arguments(parser)
    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from kidneyssl.training.pretrain import pretrain
    from kidneyssl.training.runfolder import RunFolder

    t0 = time.perf_counter()
    from kidneyssl.reporting.figures import refresh_history_plot

    if args.locator is not None and args.unlabeled is None:
        log.error("kidneyssl pretrain: --locator needs --unlabeled DIR (the scans to locate)")
        return 2
    if args.nnunet_preprocessed is not None and args.cache is not None:
        log.error("kidneyssl pretrain: give --cache or --nnunet-preprocessed, not both")
        return 2
    if args.nnunet_preprocessed is None and args.fold is not None:
        log.error("kidneyssl pretrain: --fold needs --nnunet-preprocessed")
        return 2
    args.overrides = (list(getattr(args, "overrides", None) or []) + unlabeled_overrides(args)
                      + network_overrides(args, args.nnunet_preprocessed))
    if args.fold is not None:
        args.overrides.append(f"train.nnunet_fold={args.fold}")
    if args.nnunet_preprocessed is not None:
        args.cache = args.nnunet_preprocessed
    if args.proxy_input:
        args.overrides.append(f"pretrain.proxy_input={args.proxy_input}")
    from kidneyssl.io.outputs import check_outputs

    cache, split, method = args.cache, args.split, args.method
    check_outputs([args.out], [cache, split, args.unlabeled, args.locator], what="--out",
                  inputs_name="--cache, --split, --unlabeled and --locator")
    info = RunFolder(args.out).info() if args.resume or args.extend_epochs else None
    if info:  # a resumed or extended run keeps its own method
        method = str(info.get("method", "side"))
    unstarted = RunFolder(args.out).unstarted_inputs("pretrain") if args.resume else None
    if unstarted:  # stopped before its first checkpoint: start again with what it was given
        cache, split = cache or unstarted["cache"], unstarted["split"]
    result = pretrain(cache, args.out, resolve_config(args), method=method, split_file=split,
                      on_epoch=refresh_history_plot, resume=args.resume, force=args.force,
                      extend_epochs=args.extend_epochs, device=args.device, plan=plan_options(args),
                      unlabeled=args.unlabeled, locator=args.locator,
                      allow_locator_overlap=args.allow_locator_overlap,
                      allow_world_size_change=args.allow_world_size_change)
    if args.dry_run:
        return 0
    log.info("pretraining (%s) done: best epoch %d (val loss %.4f); checkpoints in %s", method,
             result.best_epoch + 1, result.best_score, result.run_dir)
    headline: dict[str, object] = {"method": method, "best epoch": result.best_epoch + 1,
                                   "best val loss": result.best_score}
    if "val_accuracy" in result.last:
        headline["last val pair accuracy"] = result.last["val_accuracy"]
    unl = (RunFolder(result.run_dir).info() or {}).get("unlabeled")
    if unl:
        kidneys = unl.get("kidneys")  # side: the located kidneys; image-only methods read whole scans
        headline["unlabeled scans used"] = f"{unl['used']} of {unl['scans']}" + (
            f" ({kidneys['right']} right, {kidneys['left']} left kidneys)" if kidneys else "")
    log_run_summary(result.run_dir, {"pretrain": time.perf_counter() - t0}, headline)
    return 0
