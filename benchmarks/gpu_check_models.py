"""One short GPU check of the paper-config networks (run on a lent CUDA machine; skips without one).

Measures, per layout (default / channels_last_3d) and precision (fp32 / bf16 autocast):
segmentation training step (forward + BCE/Dice/recon loss + backward + Adam) on a full-resolution
half volume 1x1x128x256x128 with its peak GPU memory, siamese training step on 4 pairs of
64x112x112 crops, and inference on the half volume; lists the parameters without a finite
gradient. bf16 runs use the networks' own GroupNorm (bf16 activations). ``gpu_paper_epoch.py`` is
the fuller benchmark; this one adds inference on the GPU. JSON to stdout and benchmarks/results/models_gpu.json (or $OUT).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch


def _time_cuda(fn, repeats: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return sorted(times)[len(times) // 2]


def _seg_row(cfg, tcfg, dev, fmt, dtype: str) -> dict:
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    from kidneyssl.models import build_segmentation_model, count_parameters

    half = (1, 1, 128, 256, 128)
    torch.manual_seed(0)
    model = build_segmentation_model(cfg).to(dev, memory_format=fmt)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
    crit = BCEDiceLoss().to(dev)
    x = torch.randn(half, device=dev).contiguous(memory_format=fmt)
    y = (x > 1).float()
    bf16 = dtype == "bf16"

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model(x)
            loss = segmentation_loss(out, x, y, 0, 10, tcfg, crit)["total"]
        loss.backward()
        opt.step()

    def infer() -> None:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            model(x)

    model.train()
    step()
    bad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    torch.cuda.reset_peak_memory_stats()
    t_train = _time_cuda(step)
    mem_train = torch.cuda.max_memory_allocated() / 2**30
    model.eval()
    torch.cuda.reset_peak_memory_stats()
    t_inf = _time_cuda(infer)
    mem_inf = torch.cuda.max_memory_allocated() / 2**30
    return {"parameters": count_parameters(model), "seg_train_step_s": round(t_train, 4),
            "seg_train_peak_gib": round(mem_train, 2), "seg_infer_s": round(t_inf, 4),
            "seg_infer_peak_gib": round(mem_inf, 2), "params_without_finite_grad": bad}


def _siamese_step_s(cfg, dev, fmt, dtype: str) -> float:
    from kidneyssl.losses import ContrastiveLoss
    from kidneyssl.models import build_siamese_model

    sia = build_siamese_model(cfg).to(dev, memory_format=fmt)
    sopt = torch.optim.Adam(sia.parameters(), lr=1e-3)
    a = torch.randn(4, 1, 64, 112, 112, device=dev).contiguous(memory_format=fmt)
    b = torch.randn(4, 1, 64, 112, 112, device=dev).contiguous(memory_format=fmt)
    lab = torch.tensor([1.0, 0.0, 1.0, 0.0], device=dev)
    closs = ContrastiveLoss()

    def sstep() -> None:
        sopt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            ea, eb = sia(a, b)
        closs(ea.float(), eb.float(), lab).backward()
        sopt.step()

    return _time_cuda(sstep)


def main() -> int:
    if not torch.cuda.is_available():
        print(json.dumps({"skipped": "no CUDA device"}))
        return 0
    from kidneyssl.config import SegTrainConfig, load_preset

    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    cfg = load_preset("paper").model
    tcfg = SegTrainConfig()
    results: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "runs": []}
    for layout in ("contiguous", "channels_last"):
        fmt = torch.channels_last_3d if layout == "channels_last" else torch.contiguous_format
        for dtype in ("fp32", "bf16"):
            row = {"layout": layout, "dtype": dtype, **_seg_row(cfg, tcfg, dev, fmt, dtype)}
            row["siamese_step_4pairs_s"] = round(_siamese_step_s(cfg, dev, fmt, dtype), 4)
            print(json.dumps(row), file=sys.stderr, flush=True)
            results["runs"].append(row)
            torch.cuda.empty_cache()
    text = json.dumps(results, indent=2)
    print(text)
    out_dir = Path(os.environ.get("OUT", Path(__file__).resolve().parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "models_gpu.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
