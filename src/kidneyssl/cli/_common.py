"""Options shared by several subcommands: presets, config files and ``--set`` overrides; argument
types whose errors are one line (``positive_int``); the ``--device auto`` rule."""

from __future__ import annotations

import argparse

from kidneyssl.config import ExperimentConfig, apply_overrides, load_config, load_preset

__all__ = ["add_config_arguments", "resolve_config", "positive_int", "resolve_device"]


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--threads``, ``--workers``); errors are one line."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a CUDA device is available, else ``cpu``; others as given.

    Raises:
        KidneySSLError: a CUDA device is asked for but none is available.
    """
    import torch

    from kidneyssl.errors import KidneySSLError

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KidneySSLError(f"device {name!r} requested but no CUDA device is available; use --device cpu")
    return name


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
