"""Options shared by several subcommands: presets, config files and ``--set`` overrides; dataset
formats; argument types whose errors are one line (``positive_int``); the ``--device auto`` rule;
the plan before a training run (``--dry-run``, ``--yes``, ``--max-hours``) and the run summary."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Iterable, Mapping

from kidneyssl.config import ExperimentConfig, apply_overrides, load_config, load_preset

__all__ = ["describe_error", "remedy_flags", "REMEDY_FLAGS", "add_config_arguments", "resolve_config",
           "add_dataset_arguments", "dataset_options", "add_unlabeled_arguments", "unlabeled_overrides",
           "add_plan_arguments", "plan_options", "add_network_arguments", "network_overrides", "log_run_summary", "positive_int", "resolve_device",
           "KNOWN_WARNINGS", "silence_known_warnings"]

log = logging.getLogger("kidneyssl.cli")

_FORMATS = ("auto", "kits19", "kits23", "nnunet", "pairs")  # as kidneyssl.io.datasets.FORMATS


#: The command-line form of each remedy an error may name (:data:`kidneyssl.errors.REMEDIES`).
REMEDY_FLAGS = {
    "force": "--force", "resume": "--resume", "extend_epochs": "--extend-epochs", "out": "another --out",
    "cache": "--cache CACHE", "device": "--device", "prepare": "kidneyssl prepare --data DIR --out CACHE",
    "prepare_force": "kidneyssl prepare --force", "data_format": "--format", "kidney_labels": "--kidney-labels",
    "labels": "--labels", "assume_yes": "--yes", "max_hours": "--max-hours",
    "allow_world_size_change": "--allow-world-size-change",
}


#: Third-party warnings checked to be harmless in a run of a ``kidneyssl`` verb, as
#: ``(message regex, category)``: the one place where the CLI silences warnings. Found by running
#: every verb on phantoms with ``-W default`` (synth, check, prepare, pretrain, train, predict
#: with every strategy and TTA, evaluate, locate, experiment); nothing else was raised.
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # torch.utils.data.DataLoader, when more reader processes are asked for than it counts CPUs:
    # they would only compete for the same cores (slower, never wrong). Our loaders start at most
    # the CPUs available to the process (kidneyssl.data.loader.build_loader, one log line when it
    # lowers the count), so this only remains for a CPU count torch makes differently.
    (r"This DataLoader will create \d+ worker processes in total", UserWarning),
)


def silence_known_warnings() -> None:
    """Ignore :data:`KNOWN_WARNINGS` (called once by ``kidneyssl.cli.main.main``). Any other
    warning still reaches stderr; with ``-W``/``PYTHONWARNINGS`` set, the user's choice stands and
    nothing is silenced."""
    import sys
    import warnings

    if sys.warnoptions:
        return
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def remedy_flags(remedy: Iterable[str]) -> list[str]:
    """The command-line options for remedies (:data:`kidneyssl.errors.REMEDIES`, ``key[=value]``)."""
    flags = []
    for item in remedy:
        key, _, value = str(item).partition("=")
        flag = REMEDY_FLAGS.get(key)
        if flag is not None:
            flags.append(f"{flag} {value}" if value else flag)
    return list(dict.fromkeys(flags))


def describe_error(err: BaseException) -> str:
    """An error's message with the command-line options its ``remedy`` names, e.g.
    ``...; resume it or start over (--resume, --force)``: the library says what to do in words,
    the CLI adds how."""
    flags = remedy_flags(getattr(err, "remedy", ()))
    return f"{err} ({', '.join(flags)})" if flags else str(err)


def add_unlabeled_arguments(parser: argparse.ArgumentParser, unlabeled_help: str) -> None:
    """``--unlabeled DIR`` and ``--min-confidence C`` (scans without masks for pretraining)."""
    parser.add_argument("--unlabeled", default=None, metavar="DIR", help=unlabeled_help)
    parser.add_argument("--min-confidence", type=float, default=None, metavar="C",
                        help="with --unlabeled: use a located scan only if its confidence is >= C (sets "
                             "pretrain.unlabeled_min_confidence, default 0.5)")


def unlabeled_overrides(args: argparse.Namespace) -> list[str]:
    """``--set``-style overrides for ``--min-confidence``."""
    value = getattr(args, "min_confidence", None)
    return [] if value is None else [f"pretrain.unlabeled_min_confidence={value}"]


def add_network_arguments(parser: argparse.ArgumentParser, *, architecture: bool = True) -> None:
    """``--architecture``, ``--plans`` and ``--configuration`` (they set ``model.*``)."""
    if architecture:
        from kidneyssl.models.registry import ARCHITECTURES

        parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default=None,
                            help="the network (sets model.architecture): dense-unet (the paper's), plain-unet or "
                                 "resenc-unet (nnU-Net's, built from --plans; default: the plans' network)")
    parser.add_argument("--plans", default=None, metavar="PLANS",
                        help="nnU-Net plans file (or, with --nnunet-preprocessed, its identifier such as "
                             "nnUNetPlans); sets model.nnunet_plans")
    parser.add_argument("--configuration", default=None, metavar="NAME",
                        help="the plans' configuration (default 3d_fullres; sets model.nnunet_configuration)")


def network_overrides(args: argparse.Namespace, preprocessed: str | None = None) -> list[str]:
    """``--set``-style overrides for ``--architecture``/``--plans``/``--configuration`` (the plans
    are read: the architecture defaults to the plans' network)."""
    architecture = getattr(args, "architecture", None)
    plans = getattr(args, "plans", None)
    if plans is None and preprocessed is not None:
        plans = "nnUNetPlans"
    if plans is None:
        if getattr(args, "configuration", None):
            log.warning("--configuration is ignored without --plans")
        return [f"model.architecture={architecture}"] if architecture else []
    from kidneyssl.models.nnunet import nnunet_model_settings

    settings = nnunet_model_settings(plans, getattr(args, "configuration", None) or "3d_fullres",
                                     architecture, preprocessed)
    return [f"model.{key}={value}" for key, value in settings.items()]


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
        KidneySSLError: not a device name (``bogus``), or a CUDA device that is not there.
    """
    import torch

    from kidneyssl.errors import KidneySSLError

    name = (name or "auto").strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise KidneySSLError(f"{name!r} is not a device; use auto, cpu, cuda or cuda:N",
                             remedy=("device=cpu",)) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise KidneySSLError(f"device {name!r} requested but no CUDA device is available; run on the CPU",
                             remedy=("device=cpu",))
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


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--dry-run``, ``--yes``, ``--max-hours`` and ``--no-probe`` to ``parser``."""
    from kidneyssl.training.plan import DEFAULT_MAX_HOURS

    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan and time estimate, then stop (nothing is written to --out)")
    parser.add_argument("-y", "--yes", action="store_true",
                        help="never ask before a run estimated over --max-hours (scripts)")
    parser.add_argument("--max-hours", type=float, default=DEFAULT_MAX_HOURS, metavar="H",
                        help=f"call out plans estimated longer than H hours (default {DEFAULT_MAX_HOURS:g})")
    parser.add_argument("--no-probe", action="store_true",
                        help="plan without timing a few steps on the device (no time estimate)")


def plan_options(args: argparse.Namespace) -> Any:
    """The :class:`kidneyssl.training.plan.PlanOptions` of the command line (asks only on a terminal)."""
    from kidneyssl.training.plan import PlanOptions

    return PlanOptions(probe=not args.no_probe, dry_run=args.dry_run, assume_yes=args.yes,
                       max_hours=args.max_hours, interactive=None)


def log_run_summary(run_dir: str | Path, stage_seconds: Mapping[str, float], metrics: Mapping[str, Any]) -> None:
    """Log what the command wrote where, its metrics, wall time and peak memory (rank 0)."""
    from kidneyssl.training.logs import format_run_summary, is_main_process

    if is_main_process():
        log.info("%s", format_run_summary(run_dir, stage_seconds, metrics))
