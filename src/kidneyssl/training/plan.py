"""Know before you wait: what a training run will do and how long it will take, before its first step.

A :class:`StagePlan` describes one training stage (pretraining or one segmentation run): cases,
epochs, iterations per epoch, device, precision, validation strategy, and seconds per iteration and
per validation unit measured by a short probe on the actual device (:func:`probe_training`): a
warm-up optimiser step and ``probe_steps`` timed steps on one real item from the cache, on a deep
copy of the model and optimiser, plus one timed validation inference. The probe leaves no trace:
the real model and optimiser are never touched and every RNG state (python, numpy, torch, CUDA)
is captured before and restored after it, so a run with the probe ends with bit-identical weights
to one without.

``pretrain`` and ``train`` call :func:`estimate_stage` and :func:`announce_plan` themselves
(options in :class:`PlanOptions`). An experiment builds one plan for all its stages::

    from kidneyssl.training.plan import (PlanOptions, announce_plan, estimate_stage,
                                         remaining_after)

    split = resolve_split(cache, cfg, split_file)        # kidneyssl.training.finetune
    pre = estimate_stage("pretrain", "siamese", cfg, cache, split, ctx)
    mws = estimate_stage("MwS", "segmentation", cfg, cache, split, ctx)
    stages = [pre, mws, dataclasses.replace(mws, name="MwoS")]   # same cost, probed once
    if not announce_plan(stages, options, ctx=ctx, cfg=cfg):     # prints; False on --dry-run
        return
    quiet = dataclasses.replace(options, announce=False)         # stages do not re-plan
    pretrain_siamese(..., plan=dataclasses.replace(quiet, later_seconds=remaining_after(stages, "pretrain")))
    train_segmentation(..., plan=dataclasses.replace(quiet, later_seconds=remaining_after(stages, "MwS")))

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
import math
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from kidneyssl.errors import KidneySSLError

if TYPE_CHECKING:  # annotations only: planning stays importable without numpy/torch work
    from kidneyssl.data.cache import Cache
    from kidneyssl.training.split import Split

__all__ = ["PlanOptions", "StagePlan", "PlanDeclined", "preserved_rng", "probe_training",
           "estimate_stage", "format_plan", "announce_plan", "remaining_after", "format_duration",
           "format_clock", "DEFAULT_MAX_HOURS"]

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
                   item: Any, *, device: Any, amp: bool = False, steps: int = 2,
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
        amp: float16 autocast with a fresh GradScaler (CUDA only), as in training.
        steps: timed steps after the warm-up.
        validate: ``(model in eval mode) -> Any``, one validation inference to time.

    Returns:
        ``(seconds per step, seconds per validation call or None)``.
    """
    import torch

    from kidneyssl.training.distributed import unwrap
    from kidneyssl.training.loop import autocast_context, backward, build_grad_scaler, optimizer_step

    net, opt = copy.deepcopy((unwrap(model), optimizer))  # copies: the real run is never touched
    if opt is None:
        opt = torch.optim.Adam(net.parameters())
    scaler = build_grad_scaler(amp, device)
    net.train()
    with preserved_rng():

        def step() -> float:
            _sync(device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with autocast_context(amp, device):
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
def _device_name(device: Any) -> str:
    name = str(device)
    if name.startswith("cuda"):
        import torch

        with contextlib.suppress(Exception):
            return f"{name} ({torch.cuda.get_device_name(device)})"
    return name


def _siamese_stage(name: str, cfg: Any, cache: Cache, split: Split, ctx: Any, model: Any, start_epoch: int
                   ) -> tuple[StagePlan, Callable[[], tuple[Any, Any, float, Any, Any, bool]]]:
    """The siamese stage's plan (without timings) and a thunk building what the probe needs."""
    from kidneyssl.training.pretrain import VAL_PAIR_SALT, _batches, _loss_fn, _pairs, proxy_split

    pc = cfg.pretrain
    proxy = proxy_split(split, cfg)  # the cases pretraining reads: held-out part of the training cases
    train_pairs = _pairs(cache, proxy.train, pc.pairs_per_epoch, pc.seed, cfg)
    val_pairs = _pairs(cache, proxy.val, pc.val_pairs, pc.seed + VAL_PAIR_SALT, cfg)
    per_rank = math.ceil(len(train_pairs) / ctx.world_size)
    iterations = math.ceil(per_rank / pc.batch_size)
    val_units = math.ceil(math.ceil(len(val_pairs) / ctx.world_size) / pc.batch_size)
    crop = "x".join(str(c) for c in cfg.pretrain.crop_size)
    plan = StagePlan(
        name=name, kind="siamese", train_cases=len(proxy.train), val_cases=len(proxy.val),
        epochs=pc.epochs, start_epoch=start_epoch, iterations_per_epoch=iterations,
        steps_per_epoch=iterations, batch=f"{pc.batch_size} pairs of {crop} crops",
        val_units=val_units, val_unit=f"batch of {pc.batch_size} pairs",
        device=_device_name(ctx.device), precision="float32",
        strategy=f"embedding distance of {len(val_pairs)} fixed kidney-crop pairs", epochs_key="pretrain.epochs",
        world_size=ctx.world_size)

    def build() -> tuple[Any, Any, float, Any, Any, bool]:
        import torch

        from kidneyssl.models import build_siamese_model

        net = model if model is not None else build_siamese_model(cfg.model).to(ctx.device)
        batch, data_s = _timed(lambda: next(_batches(train_pairs, list(range(min(pc.batch_size, len(train_pairs)))),
                                                       pc.batch_size)))
        val_batch = next(_batches(val_pairs, list(range(min(pc.batch_size, len(val_pairs)))), pc.batch_size))

        def validate(m: Any) -> Any:
            a, b, _ = (t.to(ctx.device) for t in val_batch)
            with torch.inference_mode():
                return m(a, b)

        return net, batch, data_s, _loss_fn(cfg, ctx.device), validate, False

    return plan, build


def _segmentation_stage(name: str, cfg: Any, cache: Cache, split: Split, ctx: Any, model: Any, start_epoch: int,
                        accumulate: int) -> tuple[StagePlan, Callable[[], tuple[Any, Any, float, Any, Any, bool]]]:
    """The segmentation stage's plan (without timings) and a thunk building what the probe needs."""
    from kidneyssl.data.segmentation import HalfVolumeDataset
    from kidneyssl.inference.segment import segment_image
    from kidneyssl.inference.sliding_window import choose_strategy, context_voxels, estimate_bytes_per_voxel
    from kidneyssl.preprocessing.split_plane import find_split_x
    from kidneyssl.training.finetune import _segmentation_loss, effective_config

    cfg = effective_config(cfg)
    # Half volumes exactly as train_segmentation builds them (the one definition of a half).
    context = context_voxels(cfg.inference, cfg.preprocess.spacing_mm[2])
    dataset = HalfVolumeDataset(cache, list(split.train), context=context, multiple=16)
    per_rank = math.ceil(len(dataset) / ctx.world_size)
    val_case = cache.load(split.val[0], mmap=True)
    # the strategy validation will use: segment_image's, from the image-derived plane
    strategy = choose_strategy(val_case.image.shape, find_split_x(None, val_case.image), cfg.inference,
                               cfg.preprocess.spacing_mm[2], estimate_bytes_per_voxel(cfg.model, device=ctx.device))
    icfg = cfg.inference
    how = (f"{strategy} ({'x'.join(map(str, icfg.sw_roi_size))} windows, overlap {icfg.sw_overlap})"
           if strategy == "sliding" else strategy)
    amp = bool(cfg.train.amp) and str(ctx.device).startswith("cuda")
    plan = StagePlan(
        name=name, kind="segmentation", train_cases=len(split.train), val_cases=len(split.val),
        epochs=cfg.train.epochs, start_epoch=start_epoch, iterations_per_epoch=per_rank,
        steps_per_epoch=math.ceil(per_rank / accumulate),
        batch=f"1 half volume{'' if accumulate == 1 else f', {accumulate} per optimiser step'}",
        val_units=math.ceil(len(split.val) / ctx.world_size), val_unit="case",
        device=_device_name(ctx.device), precision="float16 autocast" if amp else "float32",
        strategy=f"whole volumes on {how}{', flip TTA' if icfg.tta_flip else ''}", epochs_key="train.epochs",
        world_size=ctx.world_size)

    def build() -> tuple[Any, Any, float, Any, Any, bool]:
        from kidneyssl.models import build_segmentation_model

        net = model if model is not None else build_segmentation_model(cfg.model).to(ctx.device)

        def validate(m: Any) -> Any:
            return segment_image(m, val_case.image, cfg, spacing_mm=val_case.record.spacing_mm, device=ctx.device)

        item, data_s = _timed(lambda: dataset[0])
        # The BCE weight does not change the step's cost: the probe times it with 1.0.
        return net, item, data_s, _segmentation_loss(cfg, start_epoch, ctx.device, 1.0), validate, amp

    return plan, build


def estimate_stage(name: str, kind: str, cfg: Any, cache: Cache, split: Split, ctx: Any, *, model: Any = None,
                   optimizer: Any = None, start_epoch: int = 0, accumulate: int = 1, probe: bool = True,
                   probe_steps: int = 1) -> StagePlan:
    """Plan one stage and, with ``probe``, estimate its duration on ``ctx.device``.

    Args:
        name: shown name of the stage.
        kind: ``"siamese"`` (pretraining) or ``"segmentation"``.
        cfg: the stage's ExperimentConfig.
        cache: the opened cache (:func:`kidneyssl.data.cache.open_cache`).
        split: the :class:`~kidneyssl.training.runfolder.Split` the stage trains on.
        ctx: the :class:`~kidneyssl.training.distributed.DistContext` (device, world size).
        model, optimizer: the run's own, copied for the probe; None builds a fresh model (and
            optimiser) inside the probe's RNG guard.
        start_epoch: epochs already done (a resumed run plans its remaining epochs).
        accumulate: items per optimiser step (segmentation).
        probe: time ``probe_steps`` steps and one validation inference; False plans without
            timings (cheap).

    Raises:
        ValueError: an unknown ``kind``.
    """
    if kind == "siamese":
        plan, build = _siamese_stage(name, cfg, cache, split, ctx, model, start_epoch)
    elif kind == "segmentation":
        plan, build = _segmentation_stage(name, cfg, cache, split, ctx, model, start_epoch, accumulate)
    else:
        raise ValueError(f"kind must be 'siamese' or 'segmentation', got {kind!r}")
    if not probe or plan.remaining_epochs == 0:
        return plan
    with preserved_rng():
        net, item, data_s, compute, validate, amp = build()
        if optimizer is None:
            from kidneyssl.training.loop import build_optimizer

            section = cfg.pretrain if kind == "siamese" else cfg.train
            optimizer = build_optimizer(net, section.lr, section.weight_decay)
        step_s, val_s = probe_training(net, optimizer, compute, item, device=ctx.device, amp=amp,
                                       steps=probe_steps, validate=validate)
    return dataclasses.replace(plan, seconds_per_iteration=step_s, data_seconds_per_iteration=data_s,
                               seconds_per_val_unit=val_s)


def remaining_after(stages: Sequence[StagePlan], name: str) -> float:
    """Estimated remaining seconds of the stages after the one called ``name`` (unprobed: 0)."""
    names = [s.name for s in stages]
    if name not in names:
        raise ValueError(f"no stage {name!r} in the plan ({names})")
    return float(sum(s.remaining_seconds or 0.0 for s in stages[names.index(name) + 1:]))


# -- showing it -----------------------------------------------------------------------------------
def format_duration(seconds: float | None) -> str:
    """``"45 s"``, ``"12 min"``, ``"3.4 h"``, ``"2 d 5 h"``; ``"unknown"`` for None."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    if seconds < 90:
        return f"{seconds:.0f} s" if seconds >= 10 else f"{seconds:.1f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    days, rest = divmod(seconds, 86400)
    return f"{days:.0f} d {rest / 3600:.0f} h"


def format_clock(seconds_from_now: float, now: datetime | None = None) -> str:
    """Local clock time ``seconds_from_now`` ahead, with the date when it is not today."""
    now = now or datetime.now().astimezone()
    when = now + timedelta(seconds=float(seconds_from_now))
    return when.strftime("%H:%M %Z" if when.date() == now.date() else "%Y-%m-%d %H:%M %Z").strip()


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
