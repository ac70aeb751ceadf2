"""Options shared by several subcommands: presets, config files and ``--set`` overrides."""

from __future__ import annotations

import argparse

from kidneyssl.config import ExperimentConfig, apply_overrides, load_config, load_preset

__all__ = ["add_config_arguments", "resolve_config"]


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
