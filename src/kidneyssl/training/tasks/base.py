"""What a training method must say for the one trainer (:func:`kidneyssl.training.trainer.fit`) to
run it: the task protocol.

The trainer owns everything methods share: the run folder (claim, resume, extend), seeding, the
optimiser, mixed precision, DDP, the plan and its probe, logs, checkpoints and the ETA. A task owns
what is specific: which cases it reads, the model, the epoch's items, the loss of one item,
validation, and what its checkpoint transfers to segmentation. This is the shape of nnssl's
trainers (one base trainer, a method overrides how a batch is made and what the loss is) and of
MONAI's ``SupervisedTrainer``; here the method is a small object handed to one loop, not a
subclass of it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

from kidneyssl.config import ExperimentConfig
from kidneyssl.errors import KidneySSLError

if TYPE_CHECKING:
    from kidneyssl.data.cache import CaseSource
    from kidneyssl.training.distributed import DistContext
    from kidneyssl.training.split import Split

__all__ = ["Task", "TrainSettings", "TaskPlan", "BatchLayout", "batch_layout", "LossFn"]

#: ``(model, item) -> (loss tensor (mean over the item), {part: float}, samples in the item)``.
LossFn = Callable[[Any, Any], "tuple[Any, dict[str, float], int]"]


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation settings of a task's config section.

    Attributes:
        epochs, lr, weight_decay: Adam and the epoch count.
        batch_size: the GLOBAL batch: samples per optimiser step over every rank and accumulated
            micro-step (see :func:`batch_layout`).
        seed: initialisation, data order and sampling.
        section: the config section these come from (``train``, ``pretrain``, ``methods.mae``),
            for messages and plan suggestions (``train.epochs=20``).
        lr_schedule, warmup_epochs: the learning rate over the run
            (:func:`~kidneyssl.training.loop.scheduled_lr`; default: Adam's constant rate).
    """

    epochs: int
    lr: float
    weight_decay: float
    batch_size: int
    seed: int
    section: str
    lr_schedule: str = "constant"
    warmup_epochs: int = 0

    @property
    def epochs_key(self) -> str:
        return f"{self.section}.epochs"


@dataclass(frozen=True)
class BatchLayout:
    """How a global batch is made: ``micro_batch`` samples per forward pass on each of
    ``world_size`` ranks, ``accumulate`` passes per optimiser step."""

    micro_batch: int
    accumulate: int
    world_size: int

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.accumulate * self.world_size


def batch_layout(batch_size: int, world_size: int, *, stackable: bool, what: str, key: str) -> BatchLayout:
    """Split a global batch of ``batch_size`` samples over ``world_size`` ranks.

    Samples that can be stacked into one tensor (fixed-size crops) are split over ranks as a
    per-rank micro-batch; samples that cannot (half volumes of varying shapes: the paper trains
    with batch size 1) are one per forward pass, accumulated.

    Raises:
        KidneySSLError: the batch is not a multiple of the world size: the optimisation would
            silently differ from the configured one.
    """
    if batch_size < 1 or world_size < 1:
        raise ValueError(f"batch_size and world_size must be >= 1, got {batch_size}, {world_size}")
    if batch_size % world_size:
        multiple = world_size * math.ceil(batch_size / world_size)
        raise KidneySSLError(
            f"{key}={batch_size} ({what} per optimiser step over all processes) cannot be split over "
            f"{world_size} processes; set {key} to a multiple of {world_size} (e.g. {multiple}) or run "
            f"on {batch_size if batch_size < world_size else 'fewer'} processes")
    per_rank = batch_size // world_size
    if stackable:
        return BatchLayout(per_rank, 1, world_size)
    return BatchLayout(1, per_rank, world_size)


@dataclass(frozen=True)
class TaskPlan:
    """What the plan shows of a stage before its first step (the trainer adds device, precision
    and the probe's timings).

    Attributes:
        train_cases, val_cases: cases read for training and for validation.
        iterations_per_epoch: forward/backward passes per epoch on one rank.
        steps_per_epoch: optimiser steps per epoch on one rank.
        batch: what one iteration holds, in words.
        val_units, val_unit: validation inferences per epoch on one rank, and what one is.
        strategy: how validation works, in words.
    """

    train_cases: int
    val_cases: int
    iterations_per_epoch: int
    steps_per_epoch: int
    batch: str
    val_units: int
    val_unit: str
    strategy: str


class Task(ABC):
    """One training method (segmentation, the side proxy, MAE, Models Genesis, ...).

    Class attributes:
        name: the method's registered name (``segmentation``, ``side``, ``mae``, ``genesis``).
        kind: the run and checkpoint kind: ``segmentation`` or ``pretrain``.
        score_key: the validation value ``best.pt`` is chosen on (a key of :meth:`validate`).
        higher_is_better: the direction of ``score_key``.
        reads_labels: whether the method reads annotation masks (segmentation and the side proxy
            do; image-only methods such as MAE and Models Genesis do not). An experiment with
            label budgets pretrains a method that reads none once per seed on all training images,
            and one that reads masks once per budget on that budget's cases.

    Life cycle, as :func:`~kidneyssl.training.trainer.fit` drives it: :meth:`setup` (cheap: cases,
    datasets; also used to plan stages that have not started), :meth:`prepare` (work before the
    first step that needs the run folder, skipped on a dry run), :meth:`build_model`,
    :meth:`initialize` (new runs only), then per epoch :meth:`epoch_items`, :meth:`loss` per item,
    :meth:`validate` and :meth:`monitor`.

    Args:
        cache_dir: the prepared cache (None on resume: the run's own).
        split_file: the split to use (None: derived from the seed, as segmentation derives it).
    """

    name: ClassVar[str]
    kind: ClassVar[str]
    score_key: ClassVar[str]
    higher_is_better: ClassVar[bool]
    reads_labels: ClassVar[bool] = True

    def __init__(self, cache_dir: str | Path | None = None, split_file: str | Path | None = None) -> None:
        self.cache_dir = cache_dir
        self.split_file = split_file
        self.cfg: ExperimentConfig | None = None
        self.cache: CaseSource | None = None
        self.split: Split | None = None
        self.run_dir: Path | None = None

    # -- configuration ----------------------------------------------------------------------
    @abstractmethod
    def settings(self, cfg: ExperimentConfig) -> TrainSettings:
        """The optimisation settings of this method in ``cfg``."""

    @abstractmethod
    def with_epochs(self, cfg: ExperimentConfig, epochs: int) -> ExperimentConfig:
        """``cfg`` with this method's epoch count set to ``epochs`` (``--extend-epochs``)."""

    def effective_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``cfg`` as the run uses it (e.g. a branch whose loss weight is 0 is not built)."""
        return cfg

    def batch(self, world_size: int) -> BatchLayout:
        """How this method's global batch is made on ``world_size`` ranks."""
        settings = self.settings(self._cfg)
        return batch_layout(settings.batch_size, world_size, stackable=self.stackable, what=self.sample_name,
                            key=f"{settings.section}.batch_size")

    #: Whether samples stack into one tensor (fixed-size crops) or go one per pass.
    stackable: ClassVar[bool] = True
    #: What one sample is, in words (plural), for messages.
    sample_name: ClassVar[str] = "samples"

    # -- life cycle -------------------------------------------------------------------------
    def setup(self, cfg: ExperimentConfig, info: dict[str, Any] | None, run_dir: Path | None,
              ctx: DistContext) -> None:
        """Open the cache and the split and build what the plan needs (cheap; every rank).

        Args:
            cfg: the run's config (on resume the run's saved one).
            info: the resumed run's ``run.json`` (None for a new run): inputs come from it.
            run_dir: the run folder, or None when only planning.
            ctx: the process's distributed context.
        """
        from kidneyssl.data.cache import open_cache
        from kidneyssl.data.nnunet_preprocessed import is_nnunet_preprocessed, open_nnunet_preprocessed
        from kidneyssl.training.split import resolve_split

        if info is not None:
            self.cache_dir = self.cache_dir or info.get("cache")
            if run_dir is not None and (run_dir / "split.json").is_file():
                self.split_file = run_dir / "split.json"
        if self.cache_dir is None:
            raise KidneySSLError("no prepared cache given (and no run to resume that names one)",
                                 remedy=("cache",))
        self.cfg, self.run_dir = cfg, run_dir
        if is_nnunet_preprocessed(self.cache_dir):
            # nnU-Net's own preprocessed cases (its spacing and normalisation); the split is a fold
            self.cache = open_nnunet_preprocessed(self.cache_dir, cfg.model.nnunet_plans,
                                                  cfg.model.nnunet_configuration)
        else:
            self.cache = open_cache(self.cache_dir, expected=cfg.preprocess)
        self.split = resolve_split(self.cache, cfg, self.split_file)
        self._setup(info, ctx)

    @abstractmethod
    def _setup(self, info: dict[str, Any] | None, ctx: DistContext) -> None:
        """The method's own part of :meth:`setup` (``self.cfg``, ``cache`` and ``split`` are set)."""

    def prepare(self, ctx: DistContext) -> None:
        """Work before the first step that writes into the run folder (rank 0 works, the others
        wait); not called on a dry run. Nothing by default."""
        return None

    @abstractmethod
    def build_model(self) -> Any:
        """The network this method trains (fresh weights, on the CPU)."""

    def initialize(self, model: Any) -> dict[str, Any] | None:
        """Initialise a NEW run's model from elsewhere (e.g. pretrained weights); the returned
        report goes into ``run.json`` as ``init_report``."""
        return None

    @abstractmethod
    def epoch_items(self, epoch: int, ctx: DistContext, layout: BatchLayout) -> tuple[Iterable[Any], int]:
        """This rank's items of ``epoch`` in order (each one micro-batch) and how many there are.
        The order must be a pure function of (seed, epoch, rank) so a resumed run replays it."""

    @abstractmethod
    def loss(self, model: Any, item: Any, epoch: int) -> tuple[Any, dict[str, float], int]:
        """The loss of one item: ``(mean loss tensor, {part: float}, samples in the item)``."""

    @abstractmethod
    def validate(self, model: Any, epoch: int, ctx: DistContext) -> dict[str, Any]:
        """Validation after ``epoch``: history fields, identical on every rank (collective)."""

    def monitor(self, model: Any, epoch: int, ctx: DistContext) -> dict[str, Any]:
        """Extra history fields after :meth:`validate` (e.g. a frozen-encoder probe's Dice),
        identical on every rank; they choose nothing unless :attr:`selection` names one. None by
        default."""
        return {}

    @property
    def selection(self) -> tuple[str, bool]:
        """The history field ``best.pt`` is chosen on and whether higher is better (default
        ``score_key``, ``higher_is_better``)."""
        return self.score_key, self.higher_is_better

    @abstractmethod
    def plan(self, ctx: DistContext, layout: BatchLayout) -> TaskPlan:
        """What the plan shows of this stage (no timings)."""

    @abstractmethod
    def probe(self, ctx: DistContext, layout: BatchLayout) -> tuple[Any, Callable[[Any], Any]]:
        """One training item and a one-unit validation call ``(model in eval mode) -> Any``,
        for the plan's timed probe."""

    def loss_fn(self, epoch: int) -> LossFn:
        """:meth:`loss` at ``epoch`` as the one-argument-pair function the loop calls."""
        return lambda model, item: self.loss(model, item, epoch)

    def probe_loss(self, epoch: int) -> LossFn:
        """The loss the plan's probe times (default: :meth:`loss_fn`)."""
        return self.loss_fn(epoch)

    # -- records ----------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        """Method-specific fields of ``run.json`` (inputs a resume must reuse)."""
        return {}

    @abstractmethod
    def touched_cases(self, best: bool) -> list[str]:
        """The cases whose labels or images shaped the weights (``best``: of ``best.pt``, chosen on
        validation cases where the method validates on labelled ones)."""

    def labels_read(self, best: bool) -> list[str]:
        """The cases whose LABELS shaped the weights (or chose them: ``best``), a part of
        :meth:`touched_cases`, which also counts images: a label budget holds when these lie
        inside it. Default: every touched case (a method that reads no label says so)."""
        return self.touched_cases(best)

    def checkpoint_extra(self) -> dict[str, Any]:
        """Method-specific entries of every checkpoint."""
        return {}

    def epoch_line(self, epoch: int, epochs: int, row: dict[str, Any]) -> str:
        """The log line after an epoch."""
        return (f"{self.name} epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  "
                f"{self.score_key} {row[self.score_key]:.4f}  {row['seconds']:.1f} s")

    # -- helpers ----------------------------------------------------------------------------
    @property
    def memory_format(self) -> Any:
        """The layout of the run's training tensors and weights (``train.memory_format``, one
        setting for every method of a run)."""
        import torch

        return torch.channels_last_3d if self._cfg.train.memory_format == "channels_last" else torch.contiguous_format

    @property
    def _cfg(self) -> ExperimentConfig:
        if self.cfg is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not run")
        return self.cfg

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` improves on ``best`` (None: nothing yet)."""
        if best is None or not math.isfinite(best):
            return math.isfinite(value)
        return value > best if self.selection[1] else value < best
