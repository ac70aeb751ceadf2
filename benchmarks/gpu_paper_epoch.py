"""GPU speed of the paper's segmentation training, before and after, in one run (issue 19).

1. **Step**: one training step (forward + BCE/Dice/reconstruction loss + backward + Adam) of the
   paper network on a half volume of 128 x 256 x 144 voxels (KiTS19's median case at
   3.22 x 1.62 x 1.62 mm with 32 mm of context, padded to 16), in each setting of
   precision (fp32 / fp16 AMP with a grad scaler / bf16), GroupNorm (PyTorch's, which runs in
   float32 under autocast, vs ``kidneyssl.models.blocks.GroupNorm``, which keeps bf16/fp16),
   memory layout (contiguous / ``channels_last_3d``), ``cudnn.benchmark`` (on / off) and
   ``torch.compile`` (off / on); time per step and peak memory.
2. **Epoch**: the experiment's epoch on synthetic phantoms rendered at the paper's spacing with
   KiTS19-like grids (several shapes): ``2 x train_cases`` training halves (shuffled, as the
   trainer feeds them) and ``val_cases`` validations through ``kidneyssl.inference.segment_image``
   (what per-epoch validation calls) with Dice, in the precision ``auto`` resolves to. The first
   step at each new half shape pays cuDNN's autotuning: the result gives the epoch as measured and
   the epoch with every shape already tuned (later epochs).
3. **Siamese**: the pretraining step (4 pairs of 64 x 112 x 112 crops), fp32 and bf16.

Targets (one H100/H200): paper step <= 0.10 s, epoch < 40 s, bf16 peak memory below fp32's; the
``summary`` says which are met. JSON (device name, torch/CUDA/cuDNN versions, every measurement)
is written after each measurement, so a run cut short keeps what it measured.

Usage on a GPU: ``python benchmarks/gpu_paper_epoch.py`` (at most about 8 min on an H100/H200: no
new measurement starts after ``--budget-s`` 330 s, and the epoch stops after ``--epoch-s`` 180 s
and is extrapolated), ``--quick`` (the key settings and 24 cases + 6 validations, extrapolated;
about 3-4 min). CPU smoke test of the same code: ``--device cpu --tiny``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

#: KiTS19 (210 cases): 168 training and 42 validation cases in the paper's 80/20 split.
TRAIN_CASES, VAL_CASES = 168, 42
PAPER_HALF = (128, 256, 144)


@dataclass(frozen=True)
class StepSetting:
    """One configuration of the training step."""

    name: str
    precision: str  # fp32, bf16, fp16
    group_norm: str = "ours"  # ours (kidneyssl GroupNorm) or pytorch (float32 under autocast)
    channels_last: bool = False
    cudnn_benchmark: bool = True
    compile: bool = False


#: The settings measured before the epoch (the others follow it; ``torch.compile`` comes last).
KEY_SETTINGS = ("fp32", "bf16", "fp16_amp_pytorch_gn", "bf16_pytorch_gn", "bf16_channels_last")


def step_settings(quick: bool, device_type: str) -> list[StepSetting]:
    """The settings measured: reference first, ``torch.compile`` last (the slowest to set up)."""
    full = [
        StepSetting("fp32", "fp32"),  # the reference (0.308 s on an H100)
        StepSetting("bf16", "bf16"),
        StepSetting("fp16_amp_pytorch_gn", "fp16", "pytorch"),  # mixed precision before this change
        StepSetting("bf16_pytorch_gn", "bf16", "pytorch"),
        StepSetting("bf16_channels_last", "bf16", channels_last=True),
        StepSetting("fp16_amp", "fp16"),
        StepSetting("fp32_channels_last", "fp32", channels_last=True),
        StepSetting("fp32_no_cudnn_benchmark", "fp32", cudnn_benchmark=False),  # training before: never set
        StepSetting("bf16_no_cudnn_benchmark", "bf16", cudnn_benchmark=False),
        StepSetting("bf16_compile", "bf16", compile=True),
        StepSetting("fp32_compile", "fp32", compile=True),
    ]
    chosen = [s for s in full if s.name in KEY_SETTINGS or s.name == "bf16_compile"] if quick else full
    if device_type != "cuda":  # fp16 AMP needs CUDA; cuDNN does not apply
        chosen = [s for s in chosen if s.precision != "fp16" and s.cudnn_benchmark]
    return chosen


# --- helpers -------------------------------------------------------------------------------------

def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def _set_group_norm(model, ours: bool) -> None:
    from kidneyssl.models.blocks import GroupNorm

    for m in model.modules():
        if isinstance(m, GroupNorm):
            m.low_precision = ours


def _set_cudnn_benchmark(device, on: bool) -> None:
    from kidneyssl.training.precision import configure_cuda

    configure_cuda(device, cudnn_benchmark=on)


def _train_step(model, optimizer, scaler, precision: str, device, x, y, train_cfg, criterion):
    """One optimiser step as the trainer takes it (loss under autocast, scaler only for fp16)."""
    from kidneyssl.losses import segmentation_loss
    from kidneyssl.training.precision import autocast_context

    optimizer.zero_grad(set_to_none=True)
    with autocast_context(precision, device):
        out = model(x)
        loss = segmentation_loss(out, x, y, 0, train_cfg.epochs, train_cfg, criterion)["total"]
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss


def _build(cfg, device, setting: StepSetting):
    import torch

    from kidneyssl.losses import BCEDiceLoss
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.training.precision import build_grad_scaler

    torch.manual_seed(0)
    reconstruction = bool(cfg.model.reconstruction and cfg.train.recon_weight > 0)  # as the trainers build it
    model = build_segmentation_model(cfg.model, reconstruction=reconstruction).to(device)
    if setting.channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    _set_group_norm(model, setting.group_norm == "ours")
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    criterion = BCEDiceLoss(cfg.train.pos_weight if not isinstance(cfg.train.pos_weight, str) else 3.0).to(device)
    return model, optimizer, build_grad_scaler(setting.precision, device), criterion


# --- 1. the step ----------------------------------------------------------------------------------

def bench_step(cfg, setting: StepSetting, shape, device, steps: int, warmup: int) -> dict[str, Any]:
    import torch

    _set_cudnn_benchmark(device, setting.cudnn_benchmark)
    model, optimizer, scaler, criterion = _build(cfg, device, setting)
    net = torch.compile(model) if setting.compile else model
    fmt = torch.channels_last_3d if setting.channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 1, *shape, generator=gen).to(device).contiguous(memory_format=fmt)
    y = (torch.rand(1, 1, *shape, generator=gen) > 0.97).float().to(device).contiguous(memory_format=fmt)
    _reset_peak(device)
    first_s, times, losses = None, [], []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        loss = _train_step(net, optimizer, scaler, setting.precision, device, x, y, cfg.train, criterion)
        _sync(device)
        dt = time.perf_counter() - t0
        if i == 0:
            first_s = dt
        if i >= warmup:
            times.append(dt)
            losses.append(float(loss.detach()))
    result = {**asdict(setting), "shape": list(shape), "first_step_s": round(first_s or 0.0, 3),
              "step_s": round(statistics.mean(times), 4), "step_s_median": round(statistics.median(times), 4),
              "step_s_min": round(min(times), 4), "peak_mb": _peak_mb(device),
              "loss_finite": all(math.isfinite(v) for v in losses)}
    del net, model, optimizer, scaler, x, y
    _reset_peak(device)
    return result


# --- 2. the epoch ---------------------------------------------------------------------------------

def _phantom_case(seed: int, cfg, z_slices: int | None) -> dict[str, Any]:
    """A phantom rendered directly at the paper's spacing on a KiTS19-like grid (``z_slices``
    slices centred on the kidneys; in-plane size from the phantom's field of view), preprocessed
    as the cache stores it (window, z-score, pad to 16) with its label and training split plane."""
    from scipy import ndimage

    from kidneyssl.io.geometry import Geometry, Volume
    from kidneyssl.phantoms import kits_affine, sample_anatomy
    from kidneyssl.phantoms.generate import label_on_grid, scan_grid
    from kidneyssl.phantoms.render import render_hu
    from kidneyssl.phantoms.shapes import Grid
    from kidneyssl.preprocessing.pipeline import preprocess_image, preprocess_label
    from kidneyssl.preprocessing.split_plane import find_split_x

    anat = sample_anatomy(seed)
    full = scan_grid(anat, "full")
    spacing = tuple(float(s) for s in cfg.preprocess.spacing_mm)
    shape = [max(16, int(round(n * s / t))) for n, s, t in zip(full.shape, full.spacing, spacing)]
    origin = list(full.origin)
    if z_slices:
        centre = full.origin[0] + full.shape[0] * full.spacing[0] / 2
        shape[0] = z_slices
        origin[0] = centre - z_slices * spacing[0] / 2
    grid = Grid(shape=tuple(shape), spacing=spacing, origin=tuple(origin))  # type: ignore[arg-type]
    hu, _ = render_hu(anat, grid)
    hu = ndimage.gaussian_filter(hu, 0.5)
    hu += np.random.default_rng(seed).normal(0.0, anat.hu["noise_sd"], hu.shape).astype(np.float32)
    label = label_on_grid(anat, grid)
    geometry = Geometry(affine=kits_affine(spacing), shape=grid.shape)  # type: ignore[arg-type]
    image, record = preprocess_image(Volume(hu, geometry), cfg.preprocess, threads=1)
    mask = preprocess_label(Volume(label, geometry), record, cfg.preprocess, threads=1)
    return {"seed": seed, "image": image, "label": mask, "split_x": int(find_split_x(mask, image)),
            "spacing_mm": record.spacing_mm}


def synthesize_cases(n: int, cfg, tiny: bool, workers: int) -> list[dict[str, Any]]:
    """``n`` phantoms, rendered by ``workers`` processes in parallel (spawned: no CUDA state is
    inherited)."""
    z_choices = [None] if tiny else [112, 128, 128, 144]
    jobs = [(1000 + i, cfg, z_choices[i % len(z_choices)]) for i in range(n)]
    if workers <= 1 or n == 1:
        return [_phantom_case(*job) for job in jobs]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=min(workers, n), mp_context=ctx) as pool:
        return list(pool.map(_phantom_case, *zip(*jobs)))


def bench_epoch(cfg, cases: list[dict[str, Any]], device, train_cases: int, val_cases: int,
                channels_last: bool, deadline: float = math.inf) -> dict[str, Any]:
    """One epoch: shuffled training halves, then validation through ``segment_image``.

    Training stops at ``deadline`` (``time.perf_counter()``) with three quarters of the remaining
    time, validation at ``deadline`` (at least one case each); the KiTS19-size estimate
    extrapolates from what ran.
    """
    import torch

    from kidneyssl.inference.segment import segment_image
    from kidneyssl.inference.sliding_window import context_voxels
    from kidneyssl.metrics import dice
    from kidneyssl.preprocessing.halves import split_halves
    from kidneyssl.training.precision import describe_training_precision, resolve_training_precision

    precision = resolve_training_precision("auto", device)
    setting = StepSetting("epoch", precision, channels_last=channels_last)
    _set_cudnn_benchmark(device, True)
    model, optimizer, scaler, criterion = _build(cfg, device, setting)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    halves = []
    for case in cases:
        context = context_voxels(cfg.inference, case["spacing_mm"][2])
        images = split_halves(case["image"], case["split_x"], context, 16)
        labels = split_halves(case["label"], case["split_x"], context, 16)
        for side in images:
            halves.append((torch.from_numpy(np.ascontiguousarray(images[side], dtype=np.float32))[None, None],
                           torch.from_numpy((labels[side] > 0).astype(np.float32))[None, None]))
    if device.type == "cuda":
        halves = [(x.pin_memory(), y.pin_memory()) for x, y in halves]
    order = np.random.default_rng(0).permutation(2 * train_cases) % len(halves)
    _reset_peak(device)
    model.train()
    step_times: list[tuple[tuple[int, ...], float]] = []
    t_train = time.perf_counter()
    train_deadline = t_train + 0.75 * (deadline - t_train)
    for index in order:
        if step_times and time.perf_counter() > train_deadline:
            break
        t0 = time.perf_counter()
        x, y = halves[int(index)]
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        y = y.to(device, non_blocking=True).contiguous(memory_format=fmt)
        _train_step(model, optimizer, scaler, precision, device, x, y, cfg.train, criterion)
        _sync(device)
        step_times.append((tuple(x.shape[2:]), time.perf_counter() - t0))
    train_s = time.perf_counter() - t_train
    train_peak = _peak_mb(device)
    model.eval()
    val_times, dices, strategies = [], [], set()
    t_val = time.perf_counter()
    for j in range(val_cases):
        if val_times and time.perf_counter() > deadline:
            break
        case = cases[j % len(cases)]
        t0 = time.perf_counter()
        seg = segment_image(model, case["image"], cfg, spacing_mm=case["spacing_mm"], device=device)
        dices.append(float(dice(seg.mask, case["label"] > 0)))
        strategies.add(seg.strategy)
        val_times.append(time.perf_counter() - t0)
    val_s = time.perf_counter() - t_val
    # Later epochs: every shape tuned already. The first step at each shape is replaced by the
    # median of that shape's later steps (the overall warm median when a shape came only once).
    seen: set[tuple[int, ...]] = set()
    warm_by_shape: dict[tuple[int, ...], list[float]] = {}
    cold = []
    for shape, dt in step_times:
        if shape in seen:
            warm_by_shape.setdefault(shape, []).append(dt)
        else:
            seen.add(shape)
            cold.append((shape, dt))
    warm_all = [dt for times in warm_by_shape.values() for dt in times] or [dt for _, dt in cold]
    warm_median = statistics.median(warm_all)
    tuned_train_s = sum(warm_all) + sum(statistics.median(warm_by_shape.get(s, [warm_median])) for s, _ in cold)
    tuning_s = train_s - tuned_train_s
    result = {
        "precision": precision, "precision_line": describe_training_precision("auto", precision, device),
        "channels_last": channels_last, "distinct_phantoms": len(cases),
        "half_shapes": [list(s) for s in sorted({s for s, _ in step_times})], "train_halves": len(step_times),
        "train_halves_planned": len(order), "val_cases": len(val_times), "val_cases_planned": val_cases, "train_s": round(train_s, 2), "val_s": round(val_s, 2),
        "epoch_s": round(train_s + val_s, 2), "warm_step_s_median": round(warm_median, 4),
        "first_step_per_shape_s": [round(dt, 2) for _, dt in cold],
        "autotune_and_warmup_s": round(tuning_s, 2),
        "epoch_tuned_s": round(tuned_train_s + val_s, 2),
        "val_case_s_mean": round(statistics.mean(val_times), 3) if val_times else None,
        "val_strategies": sorted(strategies),
        "train_peak_mb": train_peak, "val_dice_mean": round(statistics.mean(dices), 4) if dices else None,
    }
    scale_train, scale_val = 2 * TRAIN_CASES / max(len(step_times), 1), VAL_CASES / max(len(val_times), 1)
    result["kits19_epoch_tuned_s_estimate"] = round(tuned_train_s * scale_train + val_s * scale_val, 1)
    del model, optimizer, scaler, halves
    _reset_peak(device)
    return result


# --- 3. the siamese step --------------------------------------------------------------------------

def bench_siamese(cfg, precision: str, device, steps: int, warmup: int, crop) -> dict[str, Any]:
    import torch

    from kidneyssl.losses import ContrastiveLoss
    from kidneyssl.models import build_siamese_model
    from kidneyssl.training.precision import autocast_context, build_grad_scaler

    _set_cudnn_benchmark(device, True)
    torch.manual_seed(0)
    model = build_siamese_model(cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.pretrain.lr, weight_decay=cfg.pretrain.weight_decay)
    scaler = build_grad_scaler(precision, device)
    loss_fn = ContrastiveLoss(cfg.pretrain.margin, cfg.pretrain.squared_distance)
    bs = cfg.pretrain.batch_size
    a, b = torch.randn(bs, 1, *crop, device=device), torch.randn(bs, 1, *crop, device=device)
    target = (torch.arange(bs, device=device) % 2).float()
    _reset_peak(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(precision, device):
            ea, eb = model(a, b)
        loss = loss_fn(ea.float(), eb.float(), target)
        (scaler.scale(loss) if scaler else loss).backward()
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    result = {"precision": precision, "batch_pairs": bs, "crop": list(crop),
              "step_s": round(statistics.mean(times), 4), "peak_mb": _peak_mb(device),
              "pretrain_epoch_s": round(statistics.mean(times) * cfg.pretrain.pairs_per_epoch / bs, 2)}
    del model, optimizer
    _reset_peak(device)
    return result


# --- driver ---------------------------------------------------------------------------------------

def _summary(result: dict[str, Any]) -> dict[str, Any]:
    steps = {s["name"]: s for s in result["steps"] if "step_s" in s}
    best = min(steps.values(), key=lambda s: s["step_s"]) if steps else None
    summary: dict[str, Any] = {"best_step": best and {k: best[k] for k in ("name", "step_s", "peak_mb")}}
    if "fp32" in steps and "bf16" in steps:
        summary["bf16_speedup_vs_fp32"] = round(steps["fp32"]["step_s"] / steps["bf16"]["step_s"], 2)
        if steps["fp32"]["peak_mb"] and steps["bf16"]["peak_mb"]:
            summary["bf16_peak_below_fp32"] = steps["bf16"]["peak_mb"] < steps["fp32"]["peak_mb"]
    if result.get("paper_size") and best:
        summary["step_target_0_10_s_met"] = best["step_s"] <= 0.10
    epoch = result.get("epoch") or {}
    if result.get("paper_size") and "epoch_tuned_s" in epoch:
        # 168 cases x 2 halves + 42 validations, every shape tuned (equal to the measurement when
        # the whole epoch ran; extrapolated from what ran otherwise)
        value = epoch["kits19_epoch_tuned_s_estimate"]
        summary["epoch_s_for_target"] = value
        summary["epoch_target_40_s_met"] = value < 40
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import torch

    from kidneyssl.config import apply_overrides, load_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--quick", action="store_true", help="fewer settings, a shorter (extrapolated) epoch")
    p.add_argument("--tiny", action="store_true", help="tiny network and volumes (a CPU smoke test)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per setting (default 10; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 3; tiny 1)")
    p.add_argument("--train-cases", type=int, default=None, help=f"epoch: cases (x2 halves); default {TRAIN_CASES}")
    p.add_argument("--val-cases", type=int, default=None, help=f"epoch: validation cases; default {VAL_CASES}")
    p.add_argument("--phantoms", type=int, default=None, help="distinct phantoms for the epoch (default 6)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile settings")
    p.add_argument("--no-epoch", action="store_true")
    p.add_argument("--budget-s", type=float, default=330.0,
                   help="start no new measurement after this many seconds (what ran is kept)")
    p.add_argument("--epoch-s", type=float, default=180.0,
                   help="the epoch stops after this many seconds and is extrapolated")
    p.add_argument("--out", default=str(Path(os.environ.get("OUT", Path(__file__).parent / "results"))
                                        / "gpu_paper_epoch.json"))
    args = p.parse_args(argv)

    t_start = time.perf_counter()
    device = torch.device(args.device)
    tiny = args.tiny
    cfg = load_preset("paper")
    if tiny:
        cfg = apply_overrides(cfg, ["model.init_features=4", "model.growth_rate=4", "model.norm_groups=2",
                                    "model.embedding_dim=8", "preprocess.spacing_mm=[12.0,6.0,6.0]",
                                    "inference.half_context_mm=16", "pretrain.crop_size=[16,32,32]",
                                    "pretrain.batch_size=2"])
    shape = (32, 32, 32) if tiny else PAPER_HALF
    steps = args.steps or (2 if tiny else 10)
    warmup = args.warmup if args.warmup is not None else (1 if tiny else 3)
    train_cases = args.train_cases or (2 if tiny else 24 if args.quick else TRAIN_CASES)
    val_cases = args.val_cases if args.val_cases is not None else (1 if tiny else 6 if args.quick else VAL_CASES)
    phantoms = args.phantoms or (2 if tiny else 3 if args.quick else 6)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "quick": args.quick, "tiny": tiny, "paper_size": not tiny, "half_volume_shape": list(shape),
        "timed_steps": steps, "warmup_steps": warmup, "note": "step_s: seconds per optimiser step (mean of the "
        "timed steps); peak_mb: torch.cuda.max_memory_allocated over the steps", "steps": [], "skipped": [],
    }

    def save() -> None:
        result["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        result["summary"] = _summary(result)
        out.write_text(json.dumps(result, indent=2) + "\n")

    def over_budget(what: str) -> bool:
        if time.perf_counter() - t_start > args.budget_s:
            result["skipped"].append(f"{what}: time budget ({args.budget_s:g} s) spent")
            save()
            return True
        return False

    cases = [] if args.no_epoch else synthesize_cases(phantoms, cfg, tiny, workers=os.cpu_count() or 1)
    result["phantom_synthesis_s"] = round(time.perf_counter() - t_start, 1)
    settings = step_settings(args.quick, device.type)
    if args.no_compile or (tiny and device.type != "cuda"):
        result["skipped"] += [f"{s.name}: compile off" for s in settings if s.compile]
        settings = [s for s in settings if not s.compile]

    def measure(setting: StepSetting) -> None:
        try:
            row = bench_step(cfg, setting, shape, device, steps, warmup)
        except Exception as err:  # noqa: BLE001 - record it and carry on with the other settings
            row = {**asdict(setting), "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
            _reset_peak(device)
        print(json.dumps(row), file=sys.stderr, flush=True)
        result["steps"].append(row)
        save()

    for setting in [s for s in settings if s.name in KEY_SETTINGS]:
        if not over_budget(setting.name):
            measure(setting)
    measured = {r["name"]: r for r in result["steps"] if "step_s" in r}
    channels_last = bool(measured.get("bf16_channels_last", {}).get("step_s", math.inf)
                         < measured.get("bf16", {}).get("step_s", math.inf))
    if not args.no_epoch and not over_budget("epoch"):
        try:
            result["epoch"] = bench_epoch(cfg, cases, device, train_cases, val_cases, channels_last,
                                          deadline=time.perf_counter() + args.epoch_s)
        except Exception as err:  # noqa: BLE001
            result["epoch"] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        print(json.dumps(result["epoch"]), file=sys.stderr, flush=True)
        save()
    for setting in [s for s in settings if s.name not in KEY_SETTINGS and not s.compile]:
        if not over_budget(setting.name):
            measure(setting)
    if not tiny:
        result["siamese"] = []
        for precision in ("fp32", "bf16"):
            if not over_budget(f"siamese {precision}"):
                result["siamese"].append(bench_siamese(cfg, precision, device, steps, warmup,
                                                       cfg.pretrain.crop_size))
                save()
    for setting in [s for s in settings if s.compile]:
        if not over_budget(setting.name):  # the bf16 run in the layout the eager runs found faster
            measure(replace(setting, channels_last=channels_last) if setting.precision == "bf16" else setting)
    save()
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
