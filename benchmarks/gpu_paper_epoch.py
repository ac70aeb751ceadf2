"""Seconds per epoch and peak GPU memory of the ``paper`` preset, with and without mixed precision.

Self-contained: synthetic inputs of the paper's sizes, the real networks and losses, no data.
One epoch of the paper's experiment is estimated from measured step times:

* segmentation: ``train_cases x 2`` half-volume steps (batch size 1; KiTS19: 168 training cases,
  median 128 x 248 x 248 voxels at 3.22 x 1.62 x 1.62 mm, so halves of 128 x 256 x 144 with the
  32 mm of context across the split plane, padded to a multiple of 16), plus validation
  inference on ``val_cases x 2`` halves;
* siamese pretraining: ``pairs_per_epoch / batch_size`` steps on pairs of 64 x 112 x 112 crops.

Usage (GPU): ``python benchmarks/gpu_paper_epoch.py`` (about 1-2 minutes on an H100).
Smoke test on a CPU: ``python benchmarks/gpu_paper_epoch.py --device cpu --steps 2 --shape 32,64,48``.
Prints JSON to stdout and writes ``benchmarks/results/gpu_paper_epoch.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import time
from pathlib import Path


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _step(loss, opt, scaler) -> None:
    """Backward and optimiser step, through the AMP grad scaler when there is one."""
    from kidneyssl.training.loop import backward, optimizer_step

    opt.zero_grad(set_to_none=True)
    backward(loss, scaler)
    optimizer_step(opt, scaler)


def _autocast(amp: bool, device):
    import torch

    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def bench_segmentation(cfg, shape, steps: int, warmup: int, amp: bool, device) -> dict:
    """Training step (forward + BCE/Dice/recon loss + backward + Adam) and eval forward times."""
    import torch

    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    from kidneyssl.models import build_segmentation_model, count_parameters

    torch.manual_seed(0)
    model = build_segmentation_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    criterion = BCEDiceLoss(1.0 if isinstance(cfg.train.pos_weight, str) else cfg.train.pos_weight).to(device)
    x = torch.randn(1, 1, *shape, device=device)
    y = (torch.rand(1, 1, *shape, device=device) > 0.97).float()
    _reset_peak(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(amp, device):
            out = model(x)
        out = type(out)(out.logits.float(), None if out.reconstruction is None else out.reconstruction.float())
        loss = segmentation_loss(out, x, y, 0, cfg.train.epochs, cfg.train, criterion)["total"]
        _step(loss, opt, scaler)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    train_peak = _peak_mb(device)
    model.eval()
    _reset_peak(device)
    eval_times = []
    with torch.inference_mode():
        for i in range(warmup + max(1, steps // 2)):
            _sync(device)
            t0 = time.perf_counter()
            with _autocast(amp, device):
                model(x)
            _sync(device)
            if i >= warmup:
                eval_times.append(time.perf_counter() - t0)
    return {"params": count_parameters(model), "train_step_s": sum(times) / len(times),
            "train_step_s_min": min(times), "eval_forward_s": sum(eval_times) / len(eval_times),
            "train_peak_mb": train_peak, "eval_peak_mb": _peak_mb(device)}


def bench_siamese(cfg, steps: int, warmup: int, amp: bool, device, crop=None) -> dict:
    import torch

    from kidneyssl.losses import ContrastiveLoss
    from kidneyssl.models import build_siamese_model

    torch.manual_seed(0)
    crop = tuple(crop or cfg.pretrain.crop_size)
    model = build_siamese_model(cfg.model).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.pretrain.lr, weight_decay=cfg.pretrain.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if amp and device.type == "cuda" else None
    loss_fn = ContrastiveLoss(cfg.pretrain.margin, cfg.pretrain.squared_distance)
    bs = cfg.pretrain.batch_size
    a = torch.randn(bs, 1, *crop, device=device)
    b = torch.randn(bs, 1, *crop, device=device)
    y = (torch.arange(bs, device=device) % 2).float()
    _reset_peak(device)
    times = []
    for i in range(warmup + steps):
        _sync(device)
        t0 = time.perf_counter()
        with _autocast(amp, device):
            ea, eb = model(a, b)
        loss = loss_fn(ea.float(), eb.float(), y)
        _step(loss, opt, scaler)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"batch_pairs": bs, "crop": list(crop), "train_step_s": sum(times) / len(times),
            "train_peak_mb": _peak_mb(device)}


def main(argv=None) -> dict:
    import torch

    from kidneyssl.config import load_preset

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--shape", default="128,256,144", help="half-volume shape z,y,x (multiples of 16)")
    p.add_argument("--crop", default=None, help="siamese crop z,y,x (default: the preset's 64,112,112)")
    p.add_argument("--train-cases", type=int, default=168)
    p.add_argument("--val-cases", type=int, default=42)
    p.add_argument("--no-amp", action="store_true", help="skip the AMP measurement")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpu_paper_epoch.json"))
    args = p.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    shape = tuple(int(s) for s in args.shape.split(","))
    crop = tuple(int(s) for s in args.crop.split(",")) if args.crop else None
    cfg = load_preset("paper")
    result: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "half_volume_shape": list(shape), "steps": args.steps,
        "train_cases": args.train_cases, "val_cases": args.val_cases,
        "pretrain_pairs_per_epoch": cfg.pretrain.pairs_per_epoch, "runs": {},
    }
    for amp in ([False] if args.no_amp or device.type != "cuda" else [False, True]):
        seg = bench_segmentation(cfg, shape, args.steps, args.warmup, amp, device)
        sia = bench_siamese(cfg, args.steps, args.warmup, amp, device, crop)
        seg_epoch = seg["train_step_s"] * 2 * args.train_cases + seg["eval_forward_s"] * 2 * args.val_cases
        pre_epoch = sia["train_step_s"] * (cfg.pretrain.pairs_per_epoch / cfg.pretrain.batch_size)
        result["runs"]["amp" if amp else "fp32"] = {
            "segmentation": seg, "siamese": sia,
            "segmentation_epoch_s": seg_epoch,
            "segmentation_200_epochs_h": seg_epoch * cfg.train.epochs / 3600,
            "pretrain_epoch_s": pre_epoch,
            "pretrain_50_epochs_h": pre_epoch * cfg.pretrain.epochs / 3600,
        }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
