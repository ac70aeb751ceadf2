"""Pretraining: any registered method (the paper's side proxy by default; MAE, Models Genesis) run
by the one trainer. See :mod:`kidneyssl.training.tasks` for the methods and
:mod:`kidneyssl.training.tasks.pretraining` for which cases a pretraining run may read.

Checkpoints (kind ``pretrain``, with the ``method`` and what it ``transfer``\\s): ``last.pt``
every epoch (with optimiser and RNG state, for resume) and ``best.pt`` at the lowest validation
loss on the method's held-out training cases.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kidneyssl.config import ExperimentConfig
from kidneyssl.training.tasks.pretraining import VAL_SALT, proxy_split
from kidneyssl.training.tasks.registry import DEFAULT_METHOD, pretraining_task
from kidneyssl.training.tasks.side import evaluate_pairs
from kidneyssl.training.trainer import FitResult, fit

__all__ = ["pretrain", "PretrainResult", "pretrain_siamese", "proxy_split", "evaluate_pairs", "VAL_PAIR_SALT"]

#: Salt of the proxy validation pairs' seed (kept under its earlier name).
VAL_PAIR_SALT = VAL_SALT


def pretrain(cache_dir: str | Path | None, out_dir: str | Path, cfg: ExperimentConfig, *,
             method: str = DEFAULT_METHOD, split_file: str | Path | None = None,
             unlabeled: str | Path | None = None, locator: str | Path | None = None,
             allow_locator_overlap: bool = False, **fit_options: Any) -> FitResult:
    """Pretrain with ``method`` in ``out_dir`` (or resume/extend: ``fit_options`` are
    :func:`~kidneyssl.training.trainer.fit`'s: ``resume``, ``force``, ``extend_epochs``,
    ``device``, ``ctx``, ``plan``, ``on_epoch``, ``allow_world_size_change``).

    Args:
        cache_dir: prepared cache; None on resume uses the run's own.
        method: a registered method (:data:`~kidneyssl.training.tasks.registry.PRETRAINING_METHODS`).
        split_file: the segmentation split whose TRAINING cases are read (default: derived from
            ``train.val_fraction`` and ``train.seed``, as segmentation derives it).
        unlabeled, locator, allow_locator_overlap: scans without masks and how they are used
            (the method's own options, e.g. :class:`~kidneyssl.training.tasks.side.SideTask`).
    """
    options: dict[str, Any] = {"unlabeled": unlabeled}
    if locator is not None or allow_locator_overlap:
        options.update(locator=locator, allow_locator_overlap=allow_locator_overlap)
    task = pretraining_task(method, cache_dir, split_file, **options)
    return fit(task, out_dir, cfg, **fit_options)


@dataclass(frozen=True)
class PretrainResult:
    """Where a side-proxy pretraining run ended (the earlier result type of :func:`pretrain_siamese`)."""

    run_dir: Path
    best_epoch: int
    best_val_loss: float
    last_val_accuracy: float
    history: list[dict[str, Any]]


def pretrain_siamese(cache_dir: str | Path | None, out_dir: str | Path, cfg: ExperimentConfig,
                     **options: Any) -> PretrainResult:
    """The paper's side proxy (:func:`pretrain` with ``method="side"``), with its earlier result type."""
    result = pretrain(cache_dir, out_dir, cfg, method="side", **options)
    return PretrainResult(result.run_dir, result.best_epoch, result.best_score,
                          float(result.last.get("val_accuracy", float("nan"))), result.history)
