"""Know before you wait: what a training run will do and how long it will take, before its first step.

A :class:`StagePlan` describes one training stage (pretraining or one segmentation run): cases,
epochs, iterations per epoch, device, precision, validation strategy, and seconds per iteration and
per validation unit measured by a short probe on the actual device (:func:`probe_training`): a
warm-up optimiser step and ``probe_steps`` timed steps on one real item from the cache, on a deep
copy of the model and optimiser, plus one timed validation inference. The probe leaves no trace:
the real model and optimiser are never touched and every RNG state (python, numpy, torch, CUDA)
is captured before and restored after it, so a run with the probe ends with bit-identical weights
to one without.

The trainer (:func:`kidneyssl.training.trainer.fit`) plans its own stage; an experiment builds one
plan for all its stages and hands each stage the remaining work after it::

    pre = estimate_stage(side_task, ctx, name="seed_0/pretrain_side")     # a set-up task
    mws = estimate_stage(seg_task, ctx, name="seed_0/train_MwS")
    stages = [pre, mws, dataclasses.replace(mws, name="seed_0/train_MwoS")]  # same cost, probed once
    if not announce_plan(stages, options, ctx=ctx, cfg=cfg):     # prints; False on --dry-run
        return
    quiet = dataclasses.replace(options, announce=False)         # stages do not re-plan
    fit(task, ..., plan=dataclasses.replace(quiet, later_seconds=remaining_after(stages, pre.name)))

``later_seconds`` is the remaining work of the stages after this one; each epoch's ETA line then
also gives the estimated end of the whole experiment. A stage that is partly done (resume) is
estimated for its remaining epochs only (``start_epoch``). :func:`format_plan` renders a list of
stages without any threshold check.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable, Iterator, Sequence

from kidneyssl.errors import KidneySSLError
from kidneyssl.progress import format_clock, format_duration

__all__ = ["PlanOptions", "StagePlan", "PlanDeclined", "preserved_rng", "probe_training",
           "estimate_stage", "format_plan", "announce_plan", "remaining_after", "format_duration",
           "format_clock", "DEFAULT_MAX_HOURS", "device_name", "PRECISION_TEXT"]

log = logging.getLogger(__name__)

#: Plans estimated to take longer than this many hours are called out (``--max-hours``).
DEFAULT_MAX_HOURS = 12.0
#: A warm-up step slower than this is taken as the step time (no further probe steps).
_SLOW_STEP_S = 20.0


class PlanDeclined(KidneySSLError):
    """The user answered no when asked whether to start a run estimated over the time limit."""


@dataclass(frozen=True)
class PlanOptions:
    """How a training command plans before its first step.

    Attributes:
        announce: estimate, print the plan and check it against ``max_hours`` (False when a
            caller, e.g. an experiment, has already announced an overall plan).
        probe: time a few steps on the device (False: the plan has no time estimate).
        probe_steps: timed optimiser steps after the warm-up step.
        dry_run: print the plan and stop before writing anything to the run folder.
        assume_yes: never ask before a run over ``max_hours`` (``--yes``).
        max_hours: plans estimated longer than this are called out, with what would fit.
        interactive: ask (y/N) before a run over ``max_hours``; None asks only when stdin is a
            terminal; a library call defaults to never asking.
        later_seconds: estimated remaining seconds of the stages after this one (experiment
            ETA); 0 when this is the last or only stage.
        stage_name: the stage's name in the plan and ETA lines (default: ``pretrain``/``train``).
    """

    announce: bool = True
    probe: bool = True
    probe_steps: int = 1
    dry_run: bool = False
    assume_yes: bool = False
    max_hours: float = DEFAULT_MAX_HOURS
    interactive: bool | None = False
    later_seconds: float = 0.0
    stage_name: str | None = None

    def __post_init__(self) -> None:
        if self.probe_steps < 1:
            raise ValueError(f"probe_steps must be >= 1, got {self.probe_steps}")
        if not self.max_hours > 0:
            raise ValueError(f"max_hours must be > 0, got {self.max_hours}")


@dataclass(frozen=True)
class StagePlan:
    """One training stage, with its time estimate (None where not probed).

    Attributes:
        name: stage name as shown (``pretrain``, ``train``, ``MwS``, ...).
        kind: ``siamese`` or ``segmentation``.
        train_cases, val_cases: case counts of the split.
        epochs: the stage's total epochs; ``start_epoch``: epochs already done (resume).
        iterations_per_epoch: forward/backward passes per epoch on one process (an iteration is
            one batch of pairs, or one half volume).
        steps_per_epoch: optimiser steps per epoch on one process.
        batch: what one iteration holds, in words.
        val_units: validation inferences per epoch on one process; ``val_unit``: what one is
            (``case``, ``batch of 4 pairs``).
        device, precision, world_size: where and how it runs.
        strategy: how validation infers, in words.
        epochs_key: the config key of the epoch count (for suggestions).
        seconds_per_iteration: probe: one iteration's forward, backward and optimiser step.
        data_seconds_per_iteration: probe: loading one item from the cache.
        seconds_per_val_unit: probe: one validation inference.
    """

    name: str
    kind: str
    train_cases: int
    val_cases: int
    epochs: int
    start_epoch: int
    iterations_per_epoch: int
    steps_per_epoch: int
    batch: str
    val_units: int
    val_unit: str
    device: str
    precision: str
    strategy: str
    epochs_key: str
    world_size: int = 1
    seconds_per_iteration: float | None = None
    data_seconds_per_iteration: float | None = None
    seconds_per_val_unit: float | None = None

    @property
    def remaining_epochs(self) -> int:
        return max(self.epochs - self.start_epoch, 0)

    @property
    def seconds_per_epoch(self) -> float | None:
        """Estimated seconds of one epoch (training + validation), None without a probe."""
        if self.seconds_per_iteration is None:
            return None
        train = self.iterations_per_epoch * (self.seconds_per_iteration + (self.data_seconds_per_iteration or 0.0))
        return train + self.val_units * (self.seconds_per_val_unit or 0.0)

    @property
    def remaining_seconds(self) -> float | None:
        """Estimated seconds of the epochs still to run, None without a probe."""
        per = self.seconds_per_epoch
        return None if per is None else per * self.remaining_epochs


# -- the probe ------------------------------------------------------------------------------------
@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Capture every global RNG state (python, numpy, torch, CUDA) and restore it on exit."""
    from kidneyssl.training.seeding import capture_rng_state, restore_rng_state

    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _sync(device: Any) -> None:
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def probe_training(model: Any, optimizer: Any, compute_loss: Callable[[Any, Any], tuple[Any, dict[str, float], int]],
                   item: Any, *, device: Any, precision: str = "fp32", steps: int = 2,
                   validate: Callable[[Any], Any] | None = None) -> tuple[float, float | None]:
    """Time optimiser steps (and one validation call) on copies of ``model`` and ``optimizer``.

    One warm-up step, then ``steps`` timed steps (the median is taken; a warm-up slower than
    20 s is taken as the step time, to keep the probe short on slow machines). Every RNG state
    is restored afterwards and the originals are not touched.

    Args:
        model: the (unwrapped) model; deep-copied together with ``optimizer``.
        optimizer: its optimiser, or None for a fresh Adam on the copy.
        compute_loss: ``(model, item) -> (loss, parts, n)`` as in
            :func:`kidneyssl.training.loop.train_one_epoch`.
        item: one loaded item (a batch of pairs or a half volume).
        device: where it runs (CUDA is synchronised around each timing).
        precision: ``fp32``, or the mixed precision training uses (``bf16``, ``fp16`` with a
            fresh grad scaler), as in training.
        steps: timed steps after the warm-up.
        validate: ``(model in eval mode) -> Any``, one validation inference to time.

    Returns:
        ``(seconds per step, seconds per validation call or None)``.
    """
    import torch

    from kidneyssl.training.distributed import unwrap
    from kidneyssl.training.loop import backward, optimizer_step
    from kidneyssl.training.precision import autocast_context, build_grad_scaler

    net, opt = copy.deepcopy((unwrap(model), optimizer))  # copies: the real run is never touched
    if opt is None:
        opt = torch.optim.Adam(net.parameters())
    scaler = build_grad_scaler(precision, device)
    net.train()
    with preserved_rng():

        def step() -> float:
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast_context(precision, device):
                loss, _, _ = compute_loss(net, item)
            backward(loss, scaler)
            optimizer_step(opt, scaler)
            float(loss.detach())
            _sync(device)
            return time.perf_counter() - t0

        warm = step()
        times = [step() for _ in range(steps)] if warm < _SLOW_STEP_S else [warm]
        per_step = sorted(times)[len(times) // 2]
        val_seconds = None
        if validate is not None:
            net.eval()
            _sync(device)
            t0 = time.perf_counter()
            with torch.inference_mode():
                validate(net)
            _sync(device)
            val_seconds = time.perf_counter() - t0
    return per_step, val_seconds


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


# -- one stage ------------------------------------------------------------------------------------
def device_name(device: Any) -> str:
    """``cuda:0 (NVIDIA H100 ...)`` or ``cpu``."""
    name = str(device)
    if name.startswith("cuda"):
        import torch

        with contextlib.suppress(Exception):
            return f"{name} ({torch.cuda.get_device_name(device)})"
    return name


#: How each training precision is shown.
PRECISION_TEXT = {"fp32": "float32", "bf16": "bfloat16 autocast", "fp16": "float16 autocast + grad scaler"}


def estimate_stage(task: Any, ctx: Any, *, name: str, model: Any = None, optimizer: Any = None,
                   start_epoch: int = 0, probe: bool = True, probe_steps: int = 1,
                   precision: str = "fp32") -> StagePlan:
    """Plan one stage of ``task`` (already :meth:`~kidneyssl.training.tasks.base.Task.setup`) and,
    with ``probe``, estimate its duration on ``ctx.device``.

    Args:
        task: the stage's task (segmentation or a pretraining method).
        ctx: the :class:`~kidneyssl.training.distributed.DistContext` (device, world size).
        name: the stage's name as shown.
        model, optimizer: the run's own, copied for the probe; None builds a fresh model (and
            optimiser) inside the probe's RNG guard.
        start_epoch: epochs already done (a resumed run plans its remaining epochs).
        probe: time ``probe_steps`` steps and one validation inference; False plans without
            timings (cheap).
        precision: the training precision (``fp32``, ``bf16``, ``fp16``).
    """
    settings = task.settings(task.cfg)
    layout = task.batch(ctx.world_size)
    facts = task.plan(ctx, layout)
    plan = StagePlan(
        name=name, kind=task.name, train_cases=facts.train_cases, val_cases=facts.val_cases,
        epochs=settings.epochs, start_epoch=start_epoch, iterations_per_epoch=facts.iterations_per_epoch,
        steps_per_epoch=facts.steps_per_epoch, batch=facts.batch, val_units=facts.val_units,
        val_unit=facts.val_unit, device=device_name(ctx.device), precision=PRECISION_TEXT.get(precision, precision),
        strategy=facts.strategy, epochs_key=settings.epochs_key, world_size=ctx.world_size)
    if not probe or plan.remaining_epochs == 0:
        return plan
    with preserved_rng():
        net = model if model is not None else task.build_model().to(ctx.device)
        (item, validate), data_s = _timed(lambda: task.probe(ctx, layout))
        if optimizer is None:
            from kidneyssl.training.loop import build_optimizer

            optimizer = build_optimizer(net, settings.lr, settings.weight_decay)
        step_s, val_s = probe_training(net, optimizer, task.probe_loss(start_epoch), item, device=ctx.device,
                                       precision=precision, steps=probe_steps, validate=validate)
    return dataclasses.replace(plan, seconds_per_iteration=step_s, data_seconds_per_iteration=data_s,
                               seconds_per_val_unit=val_s)


def remaining_after(stages: Sequence[StagePlan], name: str) -> float:
    """Estimated remaining seconds of the stages after the one called ``name`` (unprobed: 0)."""
    names = [s.name for s in stages]
    if name not in names:
        raise ValueError(f"no stage {name!r} in the plan ({names})")
    return float(sum(s.remaining_seconds or 0.0 for s in stages[names.index(name) + 1:]))


# -- showing it -----------------------------------------------------------------------------------
def _stage_lines(s: StagePlan) -> list[str]:
    epochs = (f"epochs 1-{s.epochs}" if s.start_epoch == 0
              else f"epochs {s.start_epoch + 1}-{s.epochs} of {s.epochs} ({s.start_epoch} done)")
    ranks = f" on each of {s.world_size} processes" if s.world_size > 1 else ""
    lines = [f"  {s.name} ({s.kind}): {s.train_cases} training / {s.val_cases} validation cases, {epochs}",
             f"    per epoch{ranks}: {s.iterations_per_epoch} iterations of {s.batch}, {s.steps_per_epoch} "
             f"optimiser steps; validation: {s.val_units} x {s.val_unit}",
             f"    device {s.device}, {s.precision}; validation inference: {s.strategy}"]
    if s.seconds_per_iteration is None:
        lines.append("    estimate: none (no probe)")
    else:
        data = (f" + {s.data_seconds_per_iteration:.2f} s loading" if s.data_seconds_per_iteration is not None
                else "")
        val = (f", {s.seconds_per_val_unit:.2f} s per validation {s.val_unit}"
               if s.seconds_per_val_unit is not None else "")
        lines.append(f"    estimate: {s.seconds_per_iteration:.2f} s per iteration{data}{val} -> "
                     f"{format_duration(s.seconds_per_epoch)} per epoch, "
                     f"{format_duration(s.remaining_seconds)} for {s.remaining_epochs} epoch(s)")
    return lines


def format_plan(stages: Sequence[StagePlan], now: datetime | None = None) -> str:
    """The plan as lines of text: each stage, then the total and the estimated end (clock time)."""
    lines = [f"plan: {len(stages)} stage(s)"]
    for s in stages:
        lines.extend(_stage_lines(s))
    total = _total(stages)
    if total is None:
        lines.append("  total: unknown (run without a probe)")
    else:
        lines.append(f"  total: ~{format_duration(total)} (estimated from a short probe on the device); "
                     f"ends ~{format_clock(total, now)}")
    return "\n".join(lines)


def _total(stages: Sequence[StagePlan]) -> float | None:
    if any(s.remaining_seconds is None for s in stages if s.remaining_epochs):
        return None
    return float(sum(s.remaining_seconds or 0.0 for s in stages))


def _suggestions(stages: Sequence[StagePlan], limit_s: float, cfg: Any) -> list[str]:
    """What would fit in ``limit_s``: a GPU, the demo preset, fewer epochs."""
    out = []
    if all(s.device.startswith("cpu") for s in stages):
        out.append("a GPU (this plan runs on the CPU; device 'cuda' on a machine with one)")
    if cfg is not None and getattr(cfg, "name", "") != "demo":
        out.append("the demo preset (coarser grid, smaller network, few epochs)")
    total = _total(stages) or 0.0
    fits = []
    for s in stages:
        if not s.remaining_epochs or not s.seconds_per_epoch or s.start_epoch:
            continue
        n = int(s.remaining_epochs * limit_s / total) if total else s.remaining_epochs
        fits.append(f"{s.epochs_key}={n}" if n >= 1 else
                    f"(one {s.name} epoch alone takes ~{format_duration(s.seconds_per_epoch)})")
    if fits:
        out.append("fewer epochs: " + " ".join(dict.fromkeys(fits)))
    return out


def _ask(question: str) -> bool:
    try:
        answer = input(question)
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def announce_plan(stages: Sequence[StagePlan], options: PlanOptions, *, ctx: Any = None, cfg: Any = None) -> bool:
    """Log the plan (rank 0); call out a plan over ``options.max_hours`` with what would fit.

    With ``options.announce`` False nothing is shown (a caller announced a wider plan). Over the limit and interactive (and not ``assume_yes``, one process only), asks whether to
    start; never waits for input otherwise.

    Returns:
        False when the run should stop here without writing anything (``options.dry_run``),
        True to go on.

    Raises:
        PlanDeclined: the user answered no.
    """
    is_main = ctx is None or ctx.is_main
    if not is_main or not options.announce:
        return not options.dry_run
    log.info("%s", format_plan(stages))
    total = _total(stages)
    limit_s = options.max_hours * 3600.0
    if total is not None and total > limit_s:
        tips = _suggestions(stages, limit_s, cfg)
        log.warning("this run is estimated to take ~%s, more than the %g h limit (max_hours).%s",
                    format_duration(total), options.max_hours,
                    " What would fit: " + "; ".join(tips) + "." if tips else "")
        interactive = options.interactive
        if interactive is None:
            interactive = sys.stdin is not None and sys.stdin.isatty()
        single = ctx is None or getattr(ctx, "world_size", 1) == 1
        if not options.dry_run and not options.assume_yes and interactive and single:
            if not _ask(f"Start anyway (about {format_duration(total)})? [y/N] "):
                raise PlanDeclined("stopped before the first step: the estimate is over the "
                                   f"{options.max_hours:g} h limit; start anyway without asking, or raise "
                                   "the limit", remedy=("assume_yes", "max_hours"))
    if options.dry_run:
        log.info("dry run: stopping before the first step; nothing was written")
        return False
    return True
