"""``kidneyssl synth``: write a synthetic dataset of kidney phantoms (KiTS19 layout by default;
``--format kits23|nnunet|pairs`` writes the other formats ``kidneyssl check/prepare`` read)."""

from __future__ import annotations

import argparse
import logging
import time

from kidneyssl.cli._common import positive_int

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder (KiTS19 layout: case_XXXXX/...)")
    parser.add_argument("--cases", type=positive_int, default=24, help="number of cases (default: 24)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--resolution", choices=("demo", "full"), default="demo",
                        help="demo: ~50x180x180, 4-6 mm slices; full: 512x512, 1-5 mm slices (default: demo)")
    parser.add_argument("--workers", type=positive_int, default=1, help="worker processes (default: 1)")
    parser.add_argument("--force", action="store_true", help="replace a different dataset already in --out")
    parser.add_argument("--format", dest="data_format", choices=("kits19", "kits23", "nnunet", "pairs"),
                        default="kits19", help="dataset format to write (default: kits19)")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.phantoms.dataset import MANIFEST

    if args.cases < 1 or args.workers < 1:
        log.error("kidneyssl synth: --cases and --workers must be >= 1")
        return 2
    start = time.perf_counter()
    if args.data_format != "kits19":
        from kidneyssl.phantoms.formats import write_dataset_as

        names = write_dataset_as(args.out, args.data_format, cases=args.cases, seed=args.seed,
                                 resolution=args.resolution, force=args.force)
        print(f"wrote {len(names)} {args.resolution} phantom cases to {args.out} in {args.data_format} "
              f"format (seed {args.seed}) in {time.perf_counter() - start:.1f} s")
        return 0
    folders = write_dataset(args.out, cases=args.cases, seed=args.seed, resolution=args.resolution,
                            workers=args.workers, force=args.force)
    import json
    from pathlib import Path

    info = json.loads((Path(args.out) / MANIFEST).read_text())["case_info"]
    single = sum(len(c["kidneys"]) < 2 for c in info)
    tumours = sum(c["tumours"] > 0 for c in info)
    print(f"wrote {len(folders)} {args.resolution} phantom cases to {args.out} "
          f"(seed {args.seed}; {tumours} with tumours, {single} single-kidney) "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
