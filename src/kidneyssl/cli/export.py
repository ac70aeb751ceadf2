"""``kidneyssl export --to nnunet --model RUN/best.pt --out pretrained.pth``: weights another
framework loads (nnU-Net: ``nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights FILE``)."""

from __future__ import annotations

import argparse
import logging

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--to", required=True, choices=("nnunet",), help="target framework: nnunet")
    parser.add_argument("--model", required=True,
                        help="checkpoint (.pt) of a plain-unet/resenc-unet network: pretraining or segmentation")
    parser.add_argument("--out", required=True, help="file to write (e.g. pretrained.pth)")
    parser.add_argument("--plans", default=None,
                        help="plans file of the nnU-Net training that will load the weights, to check them "
                             "against (default: the plans the checkpoint was built from, if still there)")
    parser.add_argument("--configuration", default=None,
                        help="that training's configuration (default: the checkpoint's, e.g. 3d_fullres)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def run(args: argparse.Namespace) -> int:
    from kidneyssl.models.nnunet_export import export_nnunet_weights

    report = export_nnunet_weights(args.model, args.out, plans=args.plans, configuration=args.configuration,
                                   force=args.force)
    print(f"wrote {report.out} ({report.tensors} tensors of the {report.architecture} network; pretrained: "
          f"{', '.join(p.rstrip('.') for p in report.pretrained)}"
          + (f"; freshly initialised: {', '.join(p.rstrip('.') for p in report.fresh)}" if report.fresh else "")
          + ")")
    print(f"checked against: {report.checked_against or 'nothing (no plans file)'}")
    print(f"use it with: nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights {report.out}")
    return 0
