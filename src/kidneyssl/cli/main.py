"""The ``kidneyssl`` command: one executable, verb subcommands.

Each subcommand lives in ``kidneyssl.cli.<verb>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their verb runs, so ``kidneyssl --help`` and
``kidneyssl check`` do not pay for importing torch. The CLI layer holds no numerics.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any, Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

#: verb -> one-line help. Order is the order of a typical workflow.
COMMANDS: dict[str, str] = {
    "synth": "write a synthetic KiTS19-layout dataset of kidney phantoms",
    "check": "validate a KiTS19-layout dataset (one line per problem)",
    "prepare": "resample, window, normalise and pad a dataset into a cache",
    "pretrain": "train the siamese network on the left/right kidney proxy task",
    "train": "train the segmentation network (from scratch or a pretrained encoder)",
    "experiment": "the paper's MwS vs MwoS comparison, with report",
    "demo": "synthesise phantoms and run the experiment at demo scale on a CPU",
    "predict": "segment kidneys in new scans with a trained model",
    "locate": "write kidney masks for unlabeled scans with a trained model (pseudo-labels)",
    "evaluate": "score predictions against ground truth (Dice, Hausdorff, boundary length)",
}


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, ``kidneyssl VERB: error: MESSAGE (see
    kidneyssl VERB --help)``, with exit status 2, like every other error of the CLI."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common(parser: argparse.ArgumentParser, after_verb: bool) -> None:
    """``-q``/``-v``, accepted before the verb and after it (after it, they only set the value
    when given, so that ``kidneyssl -q predict ...`` is not undone by the verb's defaults)."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if after_verb else {}
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars",
                       **extra)
    group.add_argument("-v", "--verbose", action="store_true", help="debug logging", **extra)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand's options (imports each subcommand module)."""
    from kidneyssl import __version__

    parser = OneLineParser(
        prog="kidneyssl",
        description="Self-supervised pretraining and 3-D kidney segmentation in CT "
        "(Dhere & Sivaswamy, 'Self-supervised learning for segmentation').",
    )
    parser.add_argument("--version", action="version", version=f"kidneyssl {__version__}")
    _add_common(parser, after_verb=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for verb, help_text in COMMANDS.items():
        module = importlib.import_module(f"kidneyssl.cli.{verb}")
        p = sub.add_parser(verb, help=help_text, description=help_text)
        _add_common(p, after_verb=True)
        module.add_arguments(p)
    return parser


def configure_logging(quiet: bool, verbose: bool) -> None:
    """Log to stderr; INFO by default, WARNING with --quiet, DEBUG with --verbose."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger("kidneyssl")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kidneyssl`` console script. Returns the process exit status."""
    from kidneyssl.config import ConfigError
    from kidneyssl.errors import KidneySSLError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a one-line argument error (status 2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if not args.command:
        parser.print_help()
        return 1
    if args.quiet and args.verbose:
        print(f"kidneyssl {args.command}: error: -q/--quiet and -v/--verbose exclude each other",
              file=sys.stderr)
        return 2
    configure_logging(args.quiet, args.verbose)
    module = importlib.import_module(f"kidneyssl.cli.{args.command}")
    try:
        return int(module.run(args) or 0)
    except (KidneySSLError, ConfigError) as err:
        from kidneyssl.cli._common import describe_error

        print(f"kidneyssl {args.command}: error: {describe_error(err)}", file=sys.stderr)
        return 2
    except OSError as err:  # e.g. a full disk or a file that vanished: one line, file named
        from kidneyssl.io.paths import describe_os_error

        print(f"kidneyssl {args.command}: error: {describe_os_error(err)}", file=sys.stderr)
        logging.getLogger("kidneyssl").debug("traceback", exc_info=True)
        return 2
    except KeyboardInterrupt:
        print(f"kidneyssl {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
