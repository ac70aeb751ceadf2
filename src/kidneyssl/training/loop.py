"""Epoch functions shared by siamese pretraining and segmentation training.

One optimiser step consumes ``accumulate`` items on each of ``world_size`` ranks, so the global
batch is ``accumulate * world_size`` items; gradients are averaged over all of them (DDP averages
over ranks, and each micro-step's loss is divided by ``accumulate``). GroupNorm makes per-item
statistics independent of batch composition, so 1 process accumulating 2 items and 2 processes
with 1 item each take the same steps up to float rounding.

Data order is a pure function of ``(seed, epoch)`` through ``DistributedSampler.set_epoch``, for 1
process as for N, so a resumed run replays exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from kidneyssl.progress import progress
from kidneyssl.training.distributed import DistContext, all_reduce_sum
from kidneyssl.training.precision import autocast_context, build_grad_scaler

__all__ = ["EpochResult", "StepStats", "epoch_order", "train_one_epoch", "build_optimizer", "build_grad_scaler",
           "autocast_context", "backward", "optimizer_step", "scheduled_lr"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochResult:
    """Mean training loss (and named loss parts) over every item of every rank in one epoch;
    ``seconds`` (wall) and ``data_seconds`` (waiting for items) are this rank's."""

    loss: float
    parts: dict[str, float]
    items: int
    steps: int
    seconds: float = 0.0
    data_seconds: float = 0.0


@dataclass(frozen=True)
class StepStats:
    """One optimiser step on this rank, as reported to ``train_one_epoch(on_step=...)``.

    Attributes:
        step: index of the step within the epoch.
        loss, parts: means over the step's items (this rank).
        lr: learning rate of the first parameter group.
        seconds: wall time of the step, loading included; data_seconds: of which waiting for items.
    """

    step: int
    loss: float
    parts: dict[str, float]
    lr: float
    seconds: float
    data_seconds: float


def _timed_iter(iterable: Iterable[Any]) -> Iterator[tuple[Any, float]]:
    """``(item, seconds spent in next())`` for each item: the data-loading time."""
    iterator = iter(iterable)
    while True:
        t0 = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            return
        yield item, time.perf_counter() - t0


def epoch_order(n_items: int, epoch: int, seed: int, ctx: DistContext, shuffle: bool = True) -> list[int]:
    """This rank's item indices for ``epoch``: a ``DistributedSampler`` permutation seeded with
    ``seed + epoch`` (padded by repetition so that every rank runs the same number of steps)."""
    from torch.utils.data import DistributedSampler

    if n_items < 1:
        raise ValueError("no items to train on")
    indices: Any = range(n_items)  # a Sequence serves as the sampler's dataset: only len() is used
    sampler: DistributedSampler[int] = DistributedSampler(indices, num_replicas=ctx.world_size, rank=ctx.rank,
                                 shuffle=shuffle, seed=int(seed), drop_last=False)
    sampler.set_epoch(int(epoch))
    return list(sampler)


def build_optimizer(model: Any, lr: float, weight_decay: float) -> Any:
    """Adam with L2 weight decay, as in the paper (Adam, lr 1e-3, weight decay 1e-2)."""
    import torch

    return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)


def scheduled_lr(base_lr: float, step: int, total_steps: int, warmup_steps: int = 0,
                 schedule: str = "constant") -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``: a linear warm-up
    over the first ``warmup_steps`` (from ``base_lr / warmup_steps``), then ``constant`` or
    ``poly`` (nnU-Net's ``(1 - step / total_steps) ** 0.9``, counted from the run's first step).
    A pure function of the step, so a resumed run continues the schedule exactly."""
    if schedule not in ("constant", "poly"):
        raise ValueError(f"unknown learning-rate schedule {schedule!r}")
    lr = float(base_lr)
    if schedule == "poly" and total_steps > 0:
        lr *= max(1.0 - step / total_steps, 0.0) ** 0.9
    if step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


def backward(loss: Any, scaler: Any | None = None) -> None:
    """``loss.backward()``, through the AMP grad scaler when there is one."""
    (scaler.scale(loss) if scaler is not None else loss).backward()


def optimizer_step(optimizer: Any, scaler: Any | None = None) -> None:
    """``optimizer.step()``, through the AMP grad scaler (and its update) when there is one."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def train_one_epoch(model: Any, items: Iterable[Any], compute_loss: Callable[[Any, Any], tuple[Any, dict[str, float], int]],
                    optimizer: Any, ctx: DistContext, *, accumulate: int = 1, scaler: Any | None = None,
                    precision: str = "fp32", total: int | None = None, desc: str = "train",
                    on_step: Callable[[StepStats], None] | None = None,
                    lr_at: Callable[[int], float] | None = None) -> EpochResult:
    """Run one epoch of optimisation.

    Args:
        model: the (possibly DDP-wrapped) module, in training mode.
        items: this rank's items in order (from :func:`epoch_order`).
        compute_loss: ``(model, item) -> (loss tensor, {part: float}, n_items_in_item)``; the loss is
            the mean over the item's samples.
        optimizer: the optimiser; stepped every ``accumulate`` items and after the last one.
        accumulate: items per optimiser step on this rank.
        scaler: a ``GradScaler`` for CUDA float16 mixed precision, or None.
        precision: ``fp32``, ``bf16`` or ``fp16`` (forward passes under that autocast).
        total: number of items, for the progress bar.
        on_step: called after every optimiser step with its :class:`StepStats` (logging).
        lr_at: the learning rate of the epoch's ``k``-th optimiser step (set before it); None
            keeps the optimiser's.

    Returns:
        :class:`EpochResult` with the loss averaged over all ranks' items (sum of per-item means
        weighted by their sample counts / total samples).

    Raises:
        KidneySSLError: a loss was NaN or infinite on any rank. It is checked before the optimiser
            step, on every rank alike (one all-reduce per step), so no weight is updated from it
            and no rank is left waiting for the others.
    """
    if accumulate < 1:
        raise ValueError(f"accumulate must be >= 1, got {accumulate}")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    count = 0
    part_sums: dict[str, float] = {}
    steps = 0
    items = list(items) if total is None else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    n_groups = math.ceil(total / accumulate)
    epoch_t0, data_total = time.perf_counter(), 0.0
    step_parts: dict[str, float] = {}
    bad: list[tuple[int, float]] = []
    for i, (item, waited) in enumerate(_timed_iter(progress(items, desc=desc, total=total, unit="item",
                                                            leave=False))):
        if i % accumulate == 0:  # first item of an optimiser step
            step_t0, step_data, step_loss, step_n, step_parts = time.perf_counter() - waited, 0.0, 0.0, 0, {}
        step_data += waited
        data_total += waited
        group_end = (i + 1) % accumulate == 0 or i + 1 == total
        # The last group may be shorter: scale its micro-losses by its own size.
        group_size = accumulate if (i // accumulate) < n_groups - 1 else total - (n_groups - 1) * accumulate
        sync = contextlib.nullcontext() if group_end or not hasattr(model, "no_sync") else model.no_sync()
        with sync:
            with autocast_context(precision, ctx.device):
                loss, parts, n = compute_loss(model, item)
            backward(loss / group_size, scaler)
        value = float(loss.detach())
        if not math.isfinite(value):
            bad.append((i, value))
        if group_end:
            if all_reduce_sum([len(bad)], ctx)[0] > 0:
                optimizer.zero_grad(set_to_none=True)
                from kidneyssl.errors import KidneySSLError

                where = f"item {bad[0][0]} of this process ({bad[0][1]})" if bad else "another process"
                raise KidneySSLError(f"training loss became non-finite at {where}; no step was taken from it. "
                                     "Lower the learning rate or check the input data")
            if lr_at is not None:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(steps)
            optimizer_step(optimizer, scaler)
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        loss_sum += value * n
        count += n
        for key, v in parts.items():
            part_sums[key] = part_sums.get(key, 0.0) + float(v) * n
        if on_step is not None:
            step_loss, step_n = step_loss + value * n, step_n + n
            for key, v in parts.items():
                step_parts[key] = step_parts.get(key, 0.0) + float(v) * n
            if group_end:
                on_step(StepStats(steps - 1, step_loss / max(step_n, 1),
                                  {k: v / max(step_n, 1) for k, v in step_parts.items()},
                                  float(optimizer.param_groups[0]["lr"]), time.perf_counter() - step_t0, step_data))
    keys = sorted(part_sums)
    reduced = all_reduce_sum([loss_sum, count] + [part_sums[k] for k in keys], ctx)
    total_count = max(reduced[1], 1.0)
    return EpochResult(loss=reduced[0] / total_count,
                       parts={k: reduced[2 + j] / total_count for j, k in enumerate(keys)},
                       items=int(reduced[1]), steps=steps, seconds=time.perf_counter() - epoch_t0,
                       data_seconds=data_total)
