"""``kidneyssl predict``: segment kidneys in new scans with a trained checkpoint."""

from __future__ import annotations

import argparse

from kidneyssl.cli._common import positive_int

__all__ = ["add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="segmentation checkpoint (.pt) from 'kidneyssl train'")
    parser.add_argument("--input", required=True,
                        help="a NIfTI file, a KiTS19-layout folder, a folder of NIfTI files, "
                             "or DICOM series folder(s)")
    parser.add_argument("--out", required=True, help="output folder for prediction_XXXXX.nii.gz")
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto",
                        help="device for inputs/stitching: auto (CUDA if available), cpu or cuda")
    parser.add_argument("--sw-device", default=None,
                        help="device the network runs on (default: --device); e.g. cuda with --device cpu")
    parser.add_argument("--tta", action="store_true",
                        help="test-time flipping along the lateral axis (2x CPU time)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write probability_XXXXX.nii.gz")
    parser.add_argument("--probability-format", choices=("float32", "uint8"), default="float32",
                        help="probability maps as float32 or uint8 = round(255 * p)")
    parser.add_argument("--no-largest-component", action="store_true",
                        help="keep every connected component (default: the largest per side)")
    parser.add_argument("--memory-budget-mb", type=positive_int, default=None,
                        help="run on the halves if they fit, else a sliding window (default: a share of the "
                             "memory available)")
    parser.add_argument("--strategy", choices=("auto", "halves", "sliding", "whole"), default="auto",
                        help="force an inference strategy (default: auto)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default=None,
                        help="network precision: auto (the default: bf16 where a short probe, cached per "
                             "machine, measures it faster on this CPU; bf16 on CUDA when supported) or "
                             "forced; printed at start")
    parser.add_argument("--backend", choices=("auto", "torch", "openvino"), default="auto",
                        help="what runs the network: auto (OpenVINO when installed and the network runs on "
                             "the CPU, else torch; the default), torch or openvino")
    parser.add_argument("--bf16", action="store_true", help="same as --precision bf16")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.system import settle_whole_scan_inference

    settle_whole_scan_inference()  # before the first tensor (see its docstring)
    import logging

    from kidneyssl.cli._common import resolve_device
    from kidneyssl.inference.predict import predict_path
    from kidneyssl.io.paths import check_output_folder, remove_stale_temp_files

    out = check_output_folder(args.out, what="--out")  # before any inference: an unwritable --out fails now
    remove_stale_temp_files(out)  # left by a killed run
    device = resolve_device(args.device)
    sw_device = resolve_device(args.sw_device) if args.sw_device else None
    summary = predict_path(
        args.model, args.input, args.out, device=device, sw_device=sw_device,
        threads=args.threads, tta=True if args.tta else None,
        largest_component=False if args.no_largest_component else None,
        memory_budget_mb=args.memory_budget_mb, bf16=args.bf16, precision=args.precision,
        save_probabilities=args.save_probabilities, probability_format=args.probability_format,
        strategy=args.strategy, backend=args.backend,
    )
    if summary.failed:
        log = logging.getLogger("kidneyssl.cli.predict")
        log.error("%d scan(s) failed:", len(summary.failed))
        for name, message in summary.failed.items():
            log.error("  %s: %s", name, message)
        return 1
    return 0
