"""Segmentation training (paper, sections 3.1 and 3.3) run by the one trainer: MwoS from scratch,
MwS from a pretraining checkpoint (:class:`~kidneyssl.training.tasks.segmentation.SegmentationTask`
has the details: loss, validation, initialisation checks)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kidneyssl.config import ExperimentConfig
from kidneyssl.training.split import annotated_case_ids, resolve_split
from kidneyssl.training.tasks.segmentation import SegmentationTask, resolve_pos_weight, validate_segmentation
from kidneyssl.training.trainer import EpochHook, fit

__all__ = ["EpochHook", "TrainResult", "train_segmentation", "validate_segmentation", "annotated_case_ids",
           "resolve_split", "effective_config", "resolve_pos_weight"]


@dataclass(frozen=True)
class TrainResult:
    """Where a segmentation run ended."""

    run_dir: Path
    best_epoch: int
    best_dice: float
    last_dice: float
    history: list[dict[str, Any]]


def effective_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``model.reconstruction`` off when ``train.recon_weight`` is 0 (branch not built)."""
    return SegmentationTask().effective_config(cfg)


def train_segmentation(cache_dir: str | Path | None, out_dir: str | Path, cfg: ExperimentConfig, *,
                       init: str = "scratch", init_parts: str = "encoder", split_file: str | Path | None = None,
                       accumulate: int = 1, allow_init_overlap: bool = False,
                       train_cases: Sequence[str] | None = None, **fit_options: Any) -> TrainResult:
    """Train (or resume/extend) a segmentation run in ``out_dir``.

    Args:
        cache_dir: prepared cache (``kidneyssl prepare``); None on resume uses the run's own.
        out_dir: run folder (see :mod:`kidneyssl.training.runfolder`).
        cfg: resolved config (ignored on resume: the run's saved config.yaml is used).
        init: ``"scratch"`` (MwoS) or a pretraining checkpoint whose weights initialise the network.
        init_parts: ``encoder`` (MwS) or ``encoder+decoder`` (a restoration method's decoder too).
        split_file: a split.json to use (every model of one seed shares one); default: derived.
        accumulate: half volumes per optimiser step per process: sets the global
            ``train.batch_size`` to ``accumulate x processes`` (1: the configured batch size).
        allow_init_overlap: accept an initialisation that touched validation/test cases of this
            split (recorded in ``run.json``); by default such a checkpoint is refused.
        train_cases: train on this subset of the split's training cases (a label budget).
        **fit_options: :func:`~kidneyssl.training.trainer.fit`'s (``resume``, ``force``,
            ``extend_epochs``, ``device``, ``ctx``, ``plan``, ``on_epoch``, ...).
    """
    if accumulate != 1:
        import os

        world = int(os.environ.get("WORLD_SIZE", "1"))
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=int(accumulate) * world))
    task = SegmentationTask(cache_dir, split_file, init=init, init_parts=init_parts,
                            allow_init_overlap=allow_init_overlap, train_cases=train_cases)
    result = fit(task, out_dir, cfg, **fit_options)
    return TrainResult(result.run_dir, result.best_epoch, result.best_score,
                       float(result.last.get("val_dice", float("nan"))), result.history)
