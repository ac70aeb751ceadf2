"""Training speed on this machine's CPU.

1. ``demo`` preset: seconds per epoch of siamese pretraining and of segmentation training
   (including the per-epoch validation on stitched whole volumes), measured on the demo's own
   phantom dataset (``cfg.synth``) with a few epochs of each.
2. ``paper`` preset at full resolution: seconds per training step (forward + loss + backward +
   Adam, batch size 1) on a synthetic 128 x 256 x 144 half volume (the KiTS19 median volume
   128 x 248 x 248 at 3.22 x 1.62 x 1.62 mm, halved with 32 mm of context and padded to 16),
   and the implied hours per epoch for 168 training cases x 2 halves.

Usage: ``python benchmarks/bench_training.py [--epochs 2] [--paper-steps 3] [--threads N]``
Prints JSON to stdout and writes ``benchmarks/results/training.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from pathlib import Path


def demo_epochs(epochs: int, workdir: Path) -> dict:
    """Seconds per epoch of the demo preset's pretraining and segmentation training."""
    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.data.prepare import prepare_dataset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.pretrain import pretrain_siamese

    cfg = load_preset("demo")
    cfg = apply_overrides(cfg, [f"pretrain.epochs={epochs}", f"train.epochs={epochs}"])
    t0 = time.perf_counter()
    write_dataset(workdir / "data", int(cfg.synth["cases"]), int(cfg.synth["seed"]),
                  resolution=cfg.synth["resolution"], workers=2)
    t_synth = time.perf_counter() - t0
    t0 = time.perf_counter()
    prepare_dataset(workdir / "data", workdir / "cache", cfg.preprocess, workers=2)
    t_prepare = time.perf_counter() - t0
    pre = pretrain_siamese(workdir / "cache", workdir / "pretrain", cfg, device="cpu")
    seg = train_segmentation(workdir / "cache", workdir / "mwos", cfg, device="cpu",
                             split_file=workdir / "pretrain" / "split.json")
    pre_s = [r["seconds"] for r in pre.history]
    seg_s = [r["seconds"] for r in seg.history]
    return {
        "cases": int(cfg.synth["cases"]), "synth_s": t_synth, "prepare_s": t_prepare,
        "pretrain_epoch_s": pre_s, "pretrain_pairs_per_epoch": cfg.pretrain.pairs_per_epoch,
        "train_epoch_s": seg_s, "train_halves_per_epoch": 2 * len(json.loads(
            (workdir / "pretrain" / "split.json").read_text())["train"]),
        "configured_epochs": {"pretrain": load_preset("demo").pretrain.epochs, "train": load_preset("demo").train.epochs},
    }


def paper_steps(steps: int, shape: tuple[int, int, int], layout: str = "contiguous") -> dict:
    """Seconds per full-resolution training step of the paper preset on the CPU."""
    import torch

    from kidneyssl.config import load_preset
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    from kidneyssl.models import build_segmentation_model, count_parameters

    gflop = step_gflop(tuple(shape))  # counted first: a failure here costs no timed step
    cfg = load_preset("paper")
    torch.manual_seed(0)
    fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
    model = build_segmentation_model(cfg.model).to(memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    criterion = BCEDiceLoss(1.0 if isinstance(cfg.train.pos_weight, str) else cfg.train.pos_weight)
    x = torch.randn(1, 1, *shape).contiguous(memory_format=fmt)
    y = (torch.rand(1, 1, *shape) > 0.97).float()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        loss = segmentation_loss(model(x), x, y, 0, cfg.train.epochs, cfg.train, criterion)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    step = min(times)
    ceiling = matmul_ceiling()
    return {"shape": list(shape), "layout": layout, "params": count_parameters(model), "step_s": times,
            "step_s_min": step,
            "step_gflop": round(gflop, 1), "step_gflops": round(gflop / step, 1),
            "matmul_4096_fp32_gflops": round(ceiling, 1), "fraction_of_matmul_ceiling": round(gflop / step / ceiling, 3),
            "epoch_h_168_cases": step * 2 * 168 / 3600,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def matmul_ceiling(n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of an n x n fp32 matmul on this process's torch threads (best of ``repeats``): the
    ceiling the training step is compared with, measured in the same run."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best / 1e9


def step_gflop(shape: tuple[int, int, int], probe: tuple[int, int, int] = (32, 64, 48)) -> float:
    """GFLOP of one paper-network training step (forward + backward) on ``shape``, counted with
    torch's FlopCounterMode on a small ``probe`` volume and scaled by the voxel ratio (every layer's
    FLOPs are proportional to its voxels, so the scaling is exact when both shapes divide by 16)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kidneyssl.config import load_preset
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    from kidneyssl.models import build_segmentation_model

    cfg = load_preset("paper")
    model = build_segmentation_model(cfg.model)
    x = torch.randn(1, 1, *probe)
    y = (torch.rand(1, 1, *probe) > 0.97).float()
    with FlopCounterMode(display=False) as counter:
        segmentation_loss(model(x), x, y, 0, cfg.train.epochs, cfg.train, BCEDiceLoss(1.0))["total"].backward()
    scale = (shape[0] * shape[1] * shape[2]) / (probe[0] * probe[1] * probe[2])
    return counter.get_total_flops() * scale / 1e9


def main(argv=None) -> dict:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="demo epochs to time (each stage)")
    p.add_argument("--paper-steps", type=int, default=3)
    p.add_argument("--shape", default="128,256,144")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--skip-demo", action="store_true")
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--layout", choices=("contiguous", "channels_last"), default="contiguous",
                   help="memory layout of the paper step (training uses the default, contiguous)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("KIDNEYSSL_NO_PROGRESS", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                    "load_average_start": os.getloadavg()}
    if not args.skip_demo:
        with tempfile.TemporaryDirectory() as tmp:
            result["demo"] = demo_epochs(args.epochs, Path(tmp))
    if not args.skip_paper:
        result["paper_cpu"] = paper_steps(args.paper_steps, tuple(int(s) for s in args.shape.split(",")),
                                          args.layout)
    result["load_average_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
