"""``kidneyssl locate --model SEG_CKPT --input DIR --out DIR``: kidney masks for unlabeled scans.

Writes ``OUT/images`` (links to the scans), ``OUT/labels`` (located masks) and ``OUT/locate.json``
(per-case kidney voxels, mL and confidence); ``kidneyssl prepare --data OUT`` reads the result.
Exit status 1 if any scan failed.
"""

from __future__ import annotations

import argparse
import logging

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="segmentation checkpoint (.pt) from 'kidneyssl train'")
    parser.add_argument("--input", required=True,
                        help="a NIfTI file, a KiTS-layout folder, a folder of NIfTI files or DICOM series")
    parser.add_argument("--out", required=True, help="output folder (images/, labels/, locate.json)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (CUDA if available)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--force", action="store_true",
                        help="replace files in --out images/ or labels/ that an earlier locate did not write "
                             "(never an input)")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.system import settle_whole_scan_inference

    settle_whole_scan_inference()  # before the first tensor (see its docstring)
    from kidneyssl.cli._common import resolve_device
    from kidneyssl.unlabeled import locate_path

    if args.threads is not None and args.threads < 1:
        log.error("kidneyssl locate: --threads must be >= 1")
        return 2
    summary = locate_path(args.model, args.input, args.out, device=resolve_device(args.device),
                          threads=args.threads, force=args.force)
    print(f"locate: {summary}")
    for case_id, message in summary.failed.items():
        log.error("  %s: %s", case_id, message)
    return 1 if summary.failed else 0
