"""``kidneyssl demo [--out DIR]``: synthesise phantoms, run the experiment at demo scale, print
where the report is. Sized for a laptop CPU (one seed, one proxy variant: minutes on 2 cores;
``--seeds 0 1 2 --proxy-variants region masked`` runs the full comparison)."""

from __future__ import annotations

import argparse
import logging

from kidneyssl.cli._common import add_config_arguments, resolve_config
from kidneyssl.cli.experiment import add_protocol_arguments, protocol_overrides

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="kidneyssl-demo", help="demo folder (default ./kidneyssl-demo)")
    parser.add_argument("--force", action="store_true", help="start over in an --out that holds something else")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda or cuda:N")
    add_protocol_arguments(parser)
    add_config_arguments(parser, default_preset="demo")


def run(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from kidneyssl.cli.experiment import print_result
    from kidneyssl.workflows.experiment import run_demo

    t0 = time.perf_counter()
    args.overrides = list(getattr(args, "overrides", None) or []) + protocol_overrides(args)
    cfg = resolve_config(args)
    notes = []
    if len(cfg.protocol.seeds) < 2:
        notes.append(f"This demo trained one seed on {int(cfg.synth.get('cases', 24))} synthetic phantoms: it shows "
                     "that the pipeline runs and that its models segment; it cannot decide whether pretraining "
                     "helps. The comparison that can: kidneyssl demo --seeds 0 1 2 --proxy-variants region masked "
                     "(or benchmarks/science_demo.py).")
    result = run_demo(Path(args.out), cfg, force=args.force, device=args.device, report_notes=notes)
    print_result(result)
    for note in notes:
        print(note)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    return 0
