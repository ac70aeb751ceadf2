"""The ``kidneyssl`` command: one executable, verb subcommands.

Each subcommand lives in ``kidneyssl.cli.<verb>`` and exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their verb runs, so ``kidneyssl --help`` and
``kidneyssl check`` do not pay for importing torch. The CLI layer holds no numerics.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
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
    "export": "write a checkpoint's weights for another framework (nnU-Net's -pretrained_weights)",
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


class _Interrupted:
    """SIGTERM (what schedulers and ``kill`` send) handled as SIGINT: a KeyboardInterrupt in the
    main thread, so that the same clean-up runs; the previous handler comes back afterwards."""

    def __init__(self) -> None:
        self.signal_name = ""
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self.signal_name = signal.Signals(signum).name
        raise KeyboardInterrupt

    def __enter__(self) -> "_Interrupted":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted command, in words and flags."""
    if hasattr(args, "resume") and getattr(args, "out", None):
        return f"continue it with: kidneyssl {args.command} --out {args.out} --resume"
    if args.command in ("experiment", "demo"):
        return "re-run the same command to continue it (finished stages are kept)"
    if args.command in ("prepare", "synth"):
        return "re-run the same command to finish (finished cases are kept)"
    return "re-run the same command"


def _mark_run_interrupted(args: argparse.Namespace, hint: str) -> None:
    """A training run's ``run.json`` says ``interrupted`` (not ``running``) and how to resume."""
    if not (hasattr(args, "resume") and getattr(args, "out", None)):
        return
    try:
        from kidneyssl.training.logs import is_main_process
        from kidneyssl.training.runfolder import RunFolder

        if is_main_process():
            RunFolder(args.out).mark_interrupted(hint)
    except Exception:  # noqa: BLE001 - never hide the interrupt behind a bookkeeping error
        logging.getLogger("kidneyssl").debug("could not mark the run interrupted", exc_info=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``kidneyssl`` console script. Returns the process exit status (130
    when interrupted by SIGINT or SIGTERM)."""
    with _Interrupted() as interrupted:
        try:
            return _main(argv, interrupted)
        except KeyboardInterrupt:  # before the command started (parsing, imports)
            print("kidneyssl: interrupted", file=sys.stderr)
            return 130


def _main(argv: Sequence[str] | None, interrupted: _Interrupted) -> int:
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
    from kidneyssl.cli._common import silence_known_warnings

    silence_known_warnings()
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
        hint = _resume_hint(args)
        _mark_run_interrupted(args, hint)
        how = f" ({interrupted.signal_name})" if interrupted.signal_name else ""
        print(f"kidneyssl {args.command}: interrupted{how}; {hint}", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
