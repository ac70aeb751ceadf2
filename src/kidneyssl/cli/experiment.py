"""``kidneyssl experiment --data DIR --out RUN``: the paper's MwS vs MwoS comparison with report."""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import (
    add_config_arguments,
    add_dataset_arguments,
    add_network_arguments,
    add_plan_arguments,
    add_unlabeled_arguments,
    dataset_options,
    network_overrides,
    plan_options,
    positive_int,
    resolve_config,
    unlabeled_overrides,
)

__all__ = ["add_arguments", "run", "print_result", "add_protocol_arguments", "protocol_overrides"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True,
                        help="dataset folder (KiTS19/KiTS23 case folders, nnU-Net raw, pairs)")
    parser.add_argument("--test-data", default=None,
                        help="a separate annotated dataset (same format) used only as the held-out test "
                             "part (default: protocol.test_fraction of --data is held out)")
    add_unlabeled_arguments(parser, "scans without masks (or a 'kidneyssl locate' output): adds MwS+U, "
                                    "pretrained on the training cases plus these scans as each seed's MwoS "
                                    "locates them")
    add_protocol_arguments(parser)
    parser.add_argument("--out", required=True, help="experiment folder (re-run to continue it)")
    parser.add_argument("--cache", default=None, help="cache folder (default: OUT/cache)")
    parser.add_argument("--force", action="store_true", help="start over in an OUT that holds something else")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    parser.add_argument("--workers", type=positive_int, default=None, help="worker processes for prepare")
    add_network_arguments(parser)
    add_config_arguments(parser)
    add_dataset_arguments(parser)
    add_plan_arguments(parser)


def add_protocol_arguments(parser: argparse.ArgumentParser) -> None:
    """``--seeds``, ``--methods``, ``--proxy-variants``, ``--init-parts``, ``--test-fraction``,
    ``--label-fractions`` and ``--label-counts`` (they set ``protocol.*``)."""
    parser.add_argument("--seeds", type=int, nargs="+", default=None, metavar="S",
                        help="one full run per seed (sets protocol.seeds), e.g. --seeds 0 1 2")
    parser.add_argument("--proxy-variants", nargs="+", choices=("region", "masked"), default=None,
                        help="proxy inputs to pretrain with, one MwS each (sets protocol.proxy_variants; the "
                             "methods side-region/side-masked)")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="pretraining methods to compare with scratch (sets protocol.methods): side-region, "
                             "side-masked, mae, genesis; scratch (MwoS) is always trained")
    parser.add_argument("--init-parts", choices=("encoder", "encoder+decoder"), default=None,
                        help="what mae/genesis give their fine-tuned model (sets protocol.init_parts; the side "
                             "proxy gives its encoder)")
    parser.add_argument("--test-fraction", type=float, default=None,
                        help="fraction of --data held out as the test part (sets protocol.test_fraction)")
    parser.add_argument("--label-fractions", type=float, nargs="+", default=None, metavar="F",
                        help="label budgets as fractions of the training cases, e.g. 0.1 0.25 0.5 1.0: every model "
                             "is also trained on nested subsets of that size (sets protocol.label_fractions; the "
                             "full training set is always run) and the report adds Dice against annotated cases")
    parser.add_argument("--label-counts", type=int, nargs="+", default=None, metavar="N",
                        help="label budgets as numbers of annotated training cases, e.g. 5 10 20 (sets "
                             "protocol.label_counts)")


def protocol_overrides(args: argparse.Namespace) -> list[str]:
    """``--set``-style overrides for the protocol options given on the command line."""
    out = []
    if getattr(args, "seeds", None):
        out.append(f"protocol.seeds=[{', '.join(str(s) for s in args.seeds)}]")
    if getattr(args, "proxy_variants", None):
        out.append(f"protocol.proxy_variants=[{', '.join(args.proxy_variants)}]")
        if not getattr(args, "methods", None):  # --proxy-variants alone: the side-* methods
            out.append(f"protocol.methods=[{', '.join('side-' + v for v in args.proxy_variants)}]")
    if getattr(args, "methods", None):
        out.append(f"protocol.methods=[{', '.join(args.methods)}]")
    if getattr(args, "init_parts", None):
        out.append(f"protocol.init_parts={args.init_parts}")
    if getattr(args, "test_fraction", None) is not None:
        out.append(f"protocol.test_fraction={args.test_fraction}")
    if getattr(args, "label_fractions", None):
        out.append(f"protocol.label_fractions=[{', '.join(repr(float(f)) for f in args.label_fractions)}]")
    if getattr(args, "label_counts", None):
        out.append(f"protocol.label_counts=[{', '.join(str(int(n)) for n in args.label_counts)}]")
    return out + unlabeled_overrides(args)


def print_result(result) -> None:  # noqa: ANN001 - ExperimentResult, imported lazily
    """Print where the report is and the headline numbers (stdout)."""
    print(f"report: {result.report}")
    for key, stats in result.summary.items():
        dice = stats.get("dice", {})
        print(f"{key}: Dice (original grid) {dice.get('mean', float('nan')):.4f} "
              f"+- {dice.get('sd', float('nan')):.4f} over {stats.get('n_cases', 0)} case x seed pairs")
    for d in result.differences.get("paired", []):
        if d["metric"] == "dice":
            interval = "95% bootstrap CI" if d.get("interval") == "bootstrap" else "95% t-interval over case means"
            print(f"{d['model']} - {d['reference']} ({d['part']}) Dice: {d['mean']:+.4f} "
                  f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] ({interval}, {d['n_cases']} cases x "
                  f"{d['n_seeds']} seed(s)): {d['conclusion']}")
    fractions = getattr(result, "label_fractions", None) or {}
    if fractions:
        print(f"label fractions: {result.report.parent / 'label_fractions.md'}")
        for e in fractions.get("cases_saved", []):
            saved = {"not reached": "scratch never reaches it", "below the curve": "below scratch's smallest budget"}
            what = saved.get(e["status"], f"scratch needs {e['scratch_cases']:.1f} cases ({e['saved']:+.1f})")
            print(f"{e['model']} with {e['annotated_cases']} annotated cases: test Dice {e['dice']:.4f}; {what}")
    if result.differences.get("rule"):
        made = ", ".join(f"{n} on {part}" for part, n in result.differences.get("n_comparisons", {}).items())
        print(f"{result.differences['rule']} Comparisons made (Holm-corrected per part): {made or 'none'}.")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.io.outputs import check_outputs
    from kidneyssl.workflows.experiment import run_experiment

    check_outputs([args.out] + ([args.cache] if args.cache else []), [args.data, args.test_data, args.unlabeled],
                  what="--out/--cache", inputs_name="--data, --test-data and --unlabeled")
    args.overrides = list(getattr(args, "overrides", None) or []) + protocol_overrides(args) + network_overrides(args)
    result = run_experiment(args.data, args.out, resolve_config(args), cache_dir=args.cache,
                            test_data=args.test_data, force=args.force, device=args.device,
                            workers=args.workers, plan=plan_options(args), unlabeled=args.unlabeled,
                            **dataset_options(args))
    if result is None:  # --dry-run
        return 0
    print_result(result)
    return 0
