"""Options shared by several subcommands: presets, config files and ``--set`` overrides."""

from __future__ import annotations

import argparse

from kidneyssl.config import ExperimentConfig, apply_overrides, load_config, load_preset

__all__ = ["add_config_arguments", "resolve_config", "add_dataset_arguments", "dataset_options"]

_FORMATS = ("auto", "kits19", "kits23", "nnunet", "pairs")  # as kidneyssl.io.datasets.FORMATS


def add_config_arguments(parser: argparse.ArgumentParser, default_preset: str = "paper") -> None:
    """Add ``--preset``, ``--config`` and ``--set`` to ``parser``."""
    parser.add_argument("--preset", default=default_preset,
                        help=f"shipped preset: paper or demo (default: {default_preset})")
    parser.add_argument("--config", default=None,
                        help="YAML/JSON config file (e.g. a run's config.yaml); replaces --preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.epochs=5 (repeatable)")


def resolve_config(args: argparse.Namespace) -> ExperimentConfig:
    """The config selected by ``--config``/``--preset`` with ``--set`` overrides applied."""
    cfg = load_config(args.config) if getattr(args, "config", None) else load_preset(args.preset)
    return apply_overrides(cfg, getattr(args, "overrides", None))


def add_dataset_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--format`` and ``--kidney-labels`` (dataset format and kidney target) to ``parser``."""
    parser.add_argument("--format", dest="data_format", choices=_FORMATS, default="auto",
                        help="dataset format: kits19, kits23 (KiTS21/KiTS23), nnunet (raw: dataset.json, "
                             "imagesTr/, labelsTr/) or pairs (images/ + labels/ or NAME + NAME_seg); "
                             "default: detected")
    parser.add_argument("--kidney-labels", default=None, metavar="L1,L2,...",
                        help="labels that form the kidney target (default: the format's: KiTS19 1,2; "
                             "KiTS23 1,2,3; nnU-Net: labels named kidney in dataset.json)")


def dataset_options(args: argparse.Namespace) -> dict:
    """``data_format`` and ``kidney_labels`` keyword arguments from the parsed options.

    Raises:
        KidneySSLError: ``--kidney-labels`` is not a list of positive integers.
    """
    from kidneyssl.errors import KidneySSLError
    from kidneyssl.io.labels import parse_label_list

    try:
        labels = parse_label_list(getattr(args, "kidney_labels", None))
    except ValueError as err:
        raise KidneySSLError(f"--kidney-labels: {err}") from None
    fmt = getattr(args, "data_format", "auto")
    return {"data_format": None if fmt == "auto" else fmt, "kidney_labels": labels}
