"""The one training loop: :func:`fit` runs any task (segmentation, the side proxy, MAE, Models
Genesis) with the same run folder, resume, plan, mixed precision, DDP, logs and checkpoints.

What it guarantees, for every method alike:

* **The folder.** Rank 0 alone decides whether the output folder may be used (new, resumed,
  extended, forced) and every other rank receives that decision (or its error), so no rank can
  find the folder half-written by another (:func:`claim_run`).
* **The batch.** The config's ``batch_size`` is the global batch: micro-batch x ranks x
  accumulation (:func:`~kidneyssl.training.tasks.base.batch_layout`); a batch the world size
  cannot make is refused before anything runs. The world size is recorded in every checkpoint,
  and a resume on another world size is refused unless explicitly allowed.
* **Resume.** ``last.pt`` (every epoch) holds weights, optimiser, grad scaler, epoch, best score,
  RNG states and world size; it is read onto the CPU and ``load_state_dict`` moves each tensor to
  its parameter's device, so a run saved on N GPUs resumes on any device. Data order is a pure
  function of (seed, epoch), so the resumed run replays the uninterrupted one.
* **Non-finite losses** stop the run before the optimiser step, on every rank
  (:func:`~kidneyssl.training.loop.train_one_epoch`).
* **Know before you wait.** The stage is planned with a timed probe before the first step
  (:mod:`kidneyssl.training.plan`); a dry run stops there having written nothing.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from kidneyssl.config import ExperimentConfig, config_to_dict
from kidneyssl.errors import KidneySSLError, RunFolderError
from kidneyssl.io.checkpoint import load_checkpoint, save_checkpoint
from kidneyssl.training.distributed import (
    DistContext,
    broadcast_object,
    decided_by_rank0,
    init_distributed,
    unwrap,
    wrap_ddp,
)
from kidneyssl.training.loop import build_grad_scaler, build_optimizer, scheduled_lr, train_one_epoch
from kidneyssl.training.plan import PlanOptions, announce_plan, estimate_stage
from kidneyssl.training.runfolder import RunFolder, begin_run
from kidneyssl.training.seeding import capture_rng_state, restore_rng_state, seed_everything
from kidneyssl.training.tasks.base import Task

__all__ = ["FitResult", "fit", "claim_run", "training_precision", "EpochHook"]

log = logging.getLogger(__name__)

#: ``(run folder, history rows so far) -> None``, called after every epoch (rank 0).
EpochHook = Callable[[Path, list[dict[str, Any]]], None]


@dataclass(frozen=True)
class FitResult:
    """Where a run ended: its folder, the best epoch and score (``score_key``), the last epoch's
    history row, and the whole history. A dry run has ``best_epoch == -1`` and no history."""

    run_dir: Path
    score_key: str
    best_epoch: int
    best_score: float
    last: dict[str, Any]
    history: list[dict[str, Any]]


def training_precision(cfg: ExperimentConfig, device: Any) -> str:
    """The training precision on ``device`` (``fp32``, ``bf16`` or ``fp16``) from ``train.precision``
    (or the earlier ``train.amp``); see :mod:`kidneyssl.training.precision`."""
    from kidneyssl.training.precision import precision_setting, resolve_training_precision

    return resolve_training_precision(precision_setting(cfg.train.precision, cfg.train.amp), device)


def claim_run(folder: RunFolder, task: Task, cfg: ExperimentConfig, ctx: DistContext, *, resume: bool, force: bool,
              extend_epochs: int, dry_run: bool, locks: contextlib.ExitStack | None = None
              ) -> tuple[ExperimentConfig, dict[str, Any] | None]:
    """Rank 0 locks the folder (into ``locks``, held until that stack closes; not on a dry run)
    and decides how it is used (:func:`~kidneyssl.training.runfolder.begin_run`); the other ranks
    receive its decision, or the error it raised, and raise the same.

    Returns:
        ``(config to use, run.json of the run being continued or None for a new run)``.

    Raises:
        RunFolderError: another live process trains in the folder (its lock), or see
            :func:`~kidneyssl.training.runfolder.begin_run`.
    """
    def decide() -> tuple[ExperimentConfig, dict[str, Any] | None]:
        if locks is not None and not dry_run:
            locks.enter_context(folder.lock())  # before begin_run: a forced start resets the folder
        return begin_run(folder, task.kind, cfg, extend=task.with_epochs, epochs_of=lambda c: task.settings(c).epochs,
                         resume=resume, force=force, extend_epochs=extend_epochs, is_main=not dry_run)

    return decided_by_rank0(decide, ctx)


def _lr_at(settings: Any, epoch: int, steps_per_epoch: int, step: int) -> float:
    """The scheduled learning rate of step ``step`` of ``epoch`` (every epoch has the same steps)."""
    n = steps_per_epoch
    return scheduled_lr(settings.lr, epoch * n + step, settings.epochs * n, settings.warmup_epochs * n,
                        settings.lr_schedule)


def _resume_state(folder: RunFolder, task: Task, model: Any, optimizer: Any, scaler: Any, ctx: DistContext,
                  allow_world_size_change: bool) -> tuple[int, dict[str, Any]]:
    """Restore ``last.pt`` into the model, optimiser and scaler; returns ``(start epoch, best)``."""
    state = load_checkpoint(folder.last, kind=task.kind, map_location="cpu")
    saved_world = int(state.get("world_size", 1))
    if saved_world != ctx.world_size and not allow_world_size_change:
        raise RunFolderError(
            f"{folder.last}: saved by {saved_world} process(es), resumed on {ctx.world_size}: the data order and "
            "batch layout would differ from the interrupted run; resume it on the same number of processes, or "
            "continue anyway", remedy=("allow_world_size_change",))
    unwrap(model).load_state_dict(state["model_state"])
    optimizer.load_state_dict(state["optimizer"])  # moves each state tensor to its parameter's device
    if scaler is not None and state.get("scaler"):  # a run resumed in another precision starts a fresh one
        scaler.load_state_dict(state["scaler"])
    restore_rng_state(state["rng"], ctx.device)
    best = dict(state["best"])
    if "score" not in best:  # written before the trainer: {"val_dice"|"val_loss": value, "epoch": e}
        best["score"] = best.get(task.selection[0])
    return int(state["epoch"]) + 1, best


def fit(task: Task, out_dir: str | Path, cfg: ExperimentConfig, *, resume: bool = False, force: bool = False,
        extend_epochs: int = 0, device: str = "auto", ctx: DistContext | None = None,
        plan: PlanOptions | None = None, on_epoch: EpochHook | None = None,
        allow_world_size_change: bool = False) -> FitResult:
    """Train (or resume/extend) ``task`` in ``out_dir``.

    Args:
        task: what to train (:mod:`kidneyssl.training.tasks`), not yet set up.
        out_dir: the run folder (files: :mod:`kidneyssl.training.runfolder`).
        cfg: the resolved config (on resume or extension the run's saved ``config.yaml`` is used).
        resume: continue an interrupted run exactly (model, optimiser, scaler, epoch, RNG).
        force: start over in a folder that holds a run.
        extend_epochs: continue a finished run with this many more epochs.
        device: ``auto``, ``cpu``, ``cuda`` (``cuda:LOCAL_RANK`` under torchrun).
        ctx: an existing distributed context (default: initialised from the environment).
        plan: planning before the first step; default: probe and print the plan, never ask.
        on_epoch: called on rank 0 after every epoch with ``(run folder, history rows)``.
        allow_world_size_change: resume on another number of processes than the run was saved by.

    Raises:
        KidneySSLError (RunFolderError, CheckpointError, DataError): before training starts, for
            a cache of another config, a checkpoint of another architecture, an empty dataset, a
            batch the world size cannot make, or a folder holding another run.
    """
    plan = plan or PlanOptions()
    ctx = ctx or init_distributed(device)
    folder = RunFolder(out_dir)
    new_folder = not folder.path.exists()
    try:
        with contextlib.ExitStack() as locks:
            cfg, info = claim_run(folder, task, cfg, ctx, resume=resume, force=force, extend_epochs=extend_epochs,
                                  dry_run=plan.dry_run, locks=locks)
            try:
                return _fit(task, folder, cfg, info, ctx, plan, on_epoch, allow_world_size_change)
            except KeyboardInterrupt:  # SIGINT, and SIGTERM as the CLI turns it into one
                if ctx.is_main and not plan.dry_run:
                    folder.mark_interrupted("continue it by resuming the run in this folder")
                raise
    except KidneySSLError:
        # refused before anything was written: leave no empty folder behind (the lock made it)
        if ctx.is_main and new_folder and folder.path.is_dir() and not any(folder.path.iterdir()):
            folder.path.rmdir()
        raise


def _fit(task: Task, folder: RunFolder, cfg: ExperimentConfig, info: dict[str, Any] | None, ctx: DistContext,
         plan: PlanOptions, on_epoch: EpochHook | None, allow_world_size_change: bool) -> FitResult:
    """:func:`fit` once the folder is claimed (and locked, on rank 0)."""
    cfg = task.effective_config(cfg)
    task.setup(cfg, info, folder.path, ctx)
    settings = task.settings(cfg)
    layout = task.batch(ctx.world_size)
    precision = training_precision(cfg, ctx.device)
    if ctx.is_main and precision != "fp32":
        from kidneyssl.training.precision import describe_training_precision, precision_setting

        log.info("%s", describe_training_precision(precision_setting(cfg.train.precision, cfg.train.amp),
                                                   precision, ctx.device))
    from kidneyssl.training.precision import configure_cuda

    configure_cuda(ctx.device, cudnn_benchmark=cfg.train.cudnn_benchmark)
    if not plan.dry_run:
        task.prepare(ctx)

    seed_everything(settings.seed)
    model = task.build_model().to(ctx.device)
    init_report = task.initialize(model) if info is None else None
    optimizer = build_optimizer(model, settings.lr, settings.weight_decay)
    scaler = build_grad_scaler(precision, ctx.device)
    start_epoch: int = 0
    best: dict[str, Any] = {"score": None, "epoch": -1}
    if info is not None:
        start_epoch, best = _resume_state(folder, task, model, optimizer, scaler, ctx, allow_world_size_change)
    # -- plan before the work: a probe on copies (no RNG trace), printed; a dry run stops here --
    default_name = "train" if task.kind == "segmentation" else "pretrain"
    stage = estimate_stage(task, ctx, name=plan.stage_name or default_name, model=model, optimizer=optimizer,
                           start_epoch=start_epoch, probe=plan.announce and plan.probe and ctx.is_main,
                           probe_steps=plan.probe_steps, precision=precision)
    if not announce_plan([stage], plan, ctx=ctx, cfg=cfg):
        return FitResult(folder.path, task.selection[0], -1, math.nan, {}, [])

    from kidneyssl.models.registry import network_spec
    from kidneyssl.training.logs import RunLogger

    spec = network_spec(cfg.model)
    run_info = {"kind": task.kind, "method": task.name, "status": "running",
                "cache": str(Path(task.cache_dir).resolve()) if task.cache_dir is not None else None,
                "epochs": settings.epochs, "world_size": ctx.world_size, "precision": precision,
                "global_batch": layout.global_batch, "micro_batch": layout.micro_batch,
                "accumulate": layout.accumulate, "architecture": spec.to_dict(), **task.run_info()}
    if info is not None and "init_report" in info:
        run_info["init_report"] = info["init_report"]
    elif init_report:
        run_info["init_report"] = init_report
    assert task.split is not None  # set by setup()
    if ctx.is_main:
        folder.begin(cfg, task.split, run_info)
    history = folder.truncate_history(start_epoch) if ctx.is_main else []
    logger = RunLogger(folder.path, name=stage.name, epochs=settings.epochs, start_epoch=start_epoch,
                       steps_per_epoch=stage.steps_per_epoch, enabled=ctx.is_main,
                       later_seconds=plan.later_seconds)
    net = wrap_ddp(model, ctx)
    log.info("%s (%s): %d training / %d validation cases, epochs %d..%d, global batch %d (%d per pass x %d "
             "process(es) x %d accumulated), %s", task.name, stage.name, stage.train_cases, stage.val_cases,
             start_epoch, settings.epochs - 1, layout.global_batch, layout.micro_batch, ctx.world_size,
             layout.accumulate, stage.precision)
    common = {"split": task.split.to_dict() if task.split is not None else None, "world_size": ctx.world_size,
              "architecture": spec.to_dict(), **task.checkpoint_extra()}
    cfg_dict = config_to_dict(cfg)
    key = task.selection[0]
    row: dict[str, Any] = {}
    try:
        for epoch in range(start_epoch, settings.epochs):
            t0 = time.perf_counter()
            items, n_items = task.epoch_items(epoch, ctx, layout)
            steps = math.ceil(n_items / layout.accumulate)  # this epoch's optimiser steps (as every epoch's)
            result = train_one_epoch(
                net, items, task.loss_fn(epoch), optimizer, ctx,
                accumulate=layout.accumulate, scaler=scaler, precision=precision, total=n_items,
                desc=f"{stage.name} {epoch + 1}/{settings.epochs}", on_step=logger.on_step(epoch),
                lr_at=functools.partial(_lr_at, settings, epoch, steps))
            metrics = task.validate(net, epoch, ctx)
            metrics.update(task.monitor(net, epoch, ctx))  # informs; chooses only if selection names it
            # the budget so far (every method alike, so unequal budgets are visible side by side):
            # optimiser steps (ranks step together) and samples over all ranks, summed over epochs
            done = history[-1] if history else {}
            row = {"epoch": epoch, "train_loss": result.loss, **result.parts, **metrics,
                   "seconds": time.perf_counter() - t0,
                   "optimizer_steps": int(done.get("optimizer_steps", 0)) + result.steps,
                   "samples_seen": int(done.get("samples_seen", 0)) + result.items}
            score = float(metrics[key])
            improved = task.better(score, best["score"])
            if improved:
                best = {"score": score, "epoch": epoch, key: score}
            if ctx.is_main:
                history.append(row)
                meta = {"epoch": epoch, "best": best, "metrics": row, **common}
                state = unwrap(model).state_dict()
                if improved:
                    save_checkpoint(folder.best, kind=task.kind, config=cfg_dict, model_state=state,
                                    touched_cases=task.touched_cases(best=True),
                                    labels_read=task.labels_read(best=True), **meta)
                save_checkpoint(folder.last, kind=task.kind, config=cfg_dict, model_state=state,
                                touched_cases=task.touched_cases(best=False),
                                labels_read=task.labels_read(best=False), optimizer=optimizer.state_dict(),
                                scaler=scaler.state_dict() if scaler is not None else None,
                                rng=capture_rng_state(ctx.device), **meta)
                folder.write_history(history)
                if on_epoch is not None:
                    on_epoch(folder.path, history)
            log.info("%s", task.epoch_line(epoch, settings.epochs, row))
            logger.end_epoch(row, result, optimizer)  # history.csv, TensorBoard, ETA line
            broadcast_object(None, ctx)  # keep ranks in step with rank 0's writes
    finally:
        logger.close()
    if ctx.is_main:
        folder.write_info({**run_info, "status": "finished", "best": best})
        history = folder.read_history()
    score = best["score"]
    return FitResult(folder.path, key, int(best["epoch"]), float(score if score is not None else math.nan),
                     history[-1] if history else row, history)
