"""Benchmark: our DenseUNet3D vs MONAI DynUNet (nnU-Net 3D full-res config) and SegResNet on CPU.

One run measures, with 2 threads:
  * the machine's fp32 (and bf16) matmul GFLOP/s (the ceiling);
  * per model: parameters, FLOPs per forward (torch.utils.flop_counter; convs and matmuls only),
    training-step time (forward + loss + backward + Adam) and peak-RSS increase at 1x1x64x128x64,
    inference time and peak-RSS increase at a full-resolution half volume 1x1x128x256x128, and
    achieved GFLOP/s as a fraction of the matmul ceiling (training FLOPs = 3 x forward);
  * our model in the default and channels_last_3d layouts, with bf16 autocast for inference, and
    the Dice between bf16 and fp32 thresholded outputs of a random-weights model (a proxy: no
    trained weights exist at benchmark time; threshold = median fp32 logit so both classes exist);
  * a torch.profiler breakdown of our training step (conv, GroupNorm, concatenation, ...).

Each measurement runs in its own subprocess so that peak RSS (``resource.getrusage``) is per model.
Runtime settings used for every model (ours and peers alike):
  * ``THP_MEM_ALLOC_ENABLE=1`` (PyTorch backs large CPU tensors with transparent huge pages):
    3-D activations are hundreds of MB and each new one is page-faulted in; a fresh 134 MB ReLU
    output cost ~5x an in-place one here. Our model is also run without it (``alloc_tuning``
    false). (glibc ``mallopt`` without mmap/trim was tried too: it fragmented the heap to 10 GB RSS.)
  * ``torch.set_num_threads(2)``, ``torch.inference_mode`` for inference.

Shared machine: other processes inflate times. Each worker therefore measures the fp32 matmul
rate just before and after its own timing and reports its fraction against the mean of those
(``fraction_of_local_matmul``), next to the fraction of the ceiling measured once at the start.
The JSON records the load average before and after.

Usage: ``python benchmarks/bench_models.py [--quick]``; JSON to stdout and to
``benchmarks/results/models.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TRAIN_SHAPE = (1, 1, 64, 128, 64)
INFER_SHAPE = (1, 1, 128, 256, 128)
THREADS = 2


def _build(name: str):
    from kidneyssl.config import ModelConfig

    if name == "ours":
        from kidneyssl.models import build_segmentation_model

        return build_segmentation_model(ModelConfig())  # paper config, reconstruction branch on
    if name == "dynunet":
        from monai.networks.nets import DynUNet

        # nnU-Net v2 3d_fullres plan for a KiTS-like 3-D CT: 6 stages, 3x3x3 kernels, first stage
        # stride 1 then 5 stride-2 stages, 32..320 filters, instance norm, leaky ReLU.
        return DynUNet(3, 1, 1, kernel_size=[3] * 6, strides=[1, 2, 2, 2, 2, 2],
                       upsample_kernel_size=[2] * 5, filters=[32, 64, 128, 256, 320, 320],
                       norm_name="instance", deep_supervision=False, res_block=False)
    if name == "segresnet":
        from monai.networks.nets import SegResNet

        return SegResNet(spatial_dims=3, init_filters=16, in_channels=1, out_channels=1)
    raise ValueError(name)


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _smooth_input(shape, seed: int = 0):
    """Smooth random 'image' (blurred noise, z-scored): less trivial than white noise."""
    import torch
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(shape[0], shape[1], *(s // 8 for s in shape[2:]), generator=g)
    x = F.interpolate(coarse, size=shape[2:], mode="trilinear", align_corners=False)
    x = x + 0.1 * torch.randn(shape, generator=g)
    return (x - x.mean()) / x.std()


def worker(task: str, name: str, layout: str, dtype: str) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    cl = layout == "channels_last"
    fmt = torch.channels_last_3d if cl else torch.contiguous_format
    model = _build(name)
    if cl:
        model = model.to(memory_format=fmt)
    result: dict = {"task": task, "model": name, "layout": layout, "dtype": dtype}
    if task in ("train", "infer"):
        result["local_matmul_gflops_before"] = matmul_gflops("fp32", n=2048, repeats=3)
        try:
            result.update(_timed(task, name, model, fmt, dtype))
        finally:
            result["local_matmul_gflops_after"] = matmul_gflops("fp32", n=2048, repeats=3)
        return result
    if task == "flops":
        from torch.utils.flop_counter import FlopCounterMode

        from kidneyssl.models import count_parameters

        result["parameters"] = count_parameters(model)
        x = torch.randn(TRAIN_SHAPE)
        for mode in ("train", "eval"):
            model.train(mode == "train")
            for shape in (TRAIN_SHAPE, INFER_SHAPE):
                with FlopCounterMode(display=False) as counter, torch.no_grad():
                    # FLOPs scale with voxels for these fully convolutional nets: count on a
                    # small input and scale (exact for convs; avoids a slow full-size pass)
                    small = (1, 1, 32, 64, 32)
                    model(torch.randn(small))
                scale = (shape[2] * shape[3] * shape[4]) / (32 * 64 * 32)
                result[f"gflop_forward_{mode}_{'x'.join(map(str, shape[2:]))}"] = \
                    counter.get_total_flops() * scale / 1e9
        del x
        return result
    raise ValueError(task)


def _timed(task: str, name: str, model, fmt, dtype: str) -> dict:
    import torch

    result: dict = {}
    if task == "train":
        from kidneyssl.config import SegTrainConfig
        from kidneyssl.losses import BCEDiceLoss, segmentation_loss

        x = _smooth_input(TRAIN_SHAPE).contiguous(memory_format=fmt)
        target = (x > 1.0).float()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-2)
        crit = BCEDiceLoss()
        cfg = SegTrainConfig()
        model.train()

        def step() -> float:
            opt.zero_grad(set_to_none=True)
            out = model(x)
            if name == "ours":
                loss = segmentation_loss(out, x, target, 0, 10, cfg, crit)["total"]
            else:
                loss = crit(_logits(out), target, 0.6, 0.4)
            loss.backward()
            opt.step()
            return float(loss)

        base = _rss_mb()
        step()  # warm-up (oneDNN primitives, Adam state)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        result.update(step_s_min=min(times), step_s_median=sorted(times)[1], peak_rss_delta_mb=_rss_mb() - base)
        if name == "ours" and os.environ.get("BENCH_PROFILE"):
            result["profile_train_step"] = _profile(step)
        return result
    if task == "infer":
        x = _smooth_input(INFER_SHAPE).contiguous(memory_format=fmt)
        model.eval()
        base = _rss_mb()
        times = []
        out = None
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            for _ in range(int(os.environ.get("BENCH_INFER_REPEATS", "2"))):
                t = time.perf_counter()
                # inference's own pass where the network has one (DenseUNet3D's fused CPU pass)
                out = _logits(model.inference_forward(x) if hasattr(model, "inference_forward") else model(x))
                times.append(time.perf_counter() - t)
        result.update(infer_s_first=times[0], infer_s_min=min(times[1:] or times),
                      peak_rss_delta_mb=_rss_mb() - base)
        if dtype == "bf16":
            with torch.inference_mode():
                ref = _logits(model(x)).float()
            low = out.float()
            thr = float(ref.median())
            result["bf16_vs_fp32"] = {
                "threshold": thr,
                "dice_at_median_threshold": _dice(low > thr, ref > thr),
                "dice_at_zero": _dice(low > 0, ref > 0),
                "foreground_fraction_fp32_at_zero": float((ref > 0).float().mean()),
                "max_abs_logit_diff": float((low - ref).abs().max()),
                "logit_std_fp32": float(ref.std()),
            }
        return result
    raise ValueError(task)


def _dice(a, b) -> float:
    inter = float((a & b).sum())
    total = float(a.sum() + b.sum())
    return 1.0 if total == 0 else 2 * inter / total


def _profile(step) -> dict:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    groups = {"convolution (fwd+bwd)": ("conv",), "group_norm (fwd+bwd)": ("group_norm",),
              "cat/copy": ("aten::cat", "aten::copy_", "contiguous"),
              "relu/threshold": ("relu", "threshold", "clamp"), "matmul": ("aten::mm", "aten::bmm", "matmul"),
              "optimizer": ("adam", "_foreach", "lerp", "addcdiv", "sqrt")}
    totals = {k: 0.0 for k in groups}
    totals["other"] = 0.0
    all_s = 0.0
    for ev in prof.key_averages():
        s = ev.self_cpu_time_total / 1e6
        all_s += s
        key = ev.key.lower()
        for label, pats in groups.items():
            if any(p.lower() in key for p in pats):
                totals[label] += s
                break
        else:
            totals["other"] += s
    return {"self_cpu_s_total": all_s, "by_kind_s": {k: round(v, 3) for k, v in totals.items()}}


def _run_worker(task: str, name: str, layout: str, dtype: str, alloc_tuning: bool = True,
                extra_env: dict | None = None) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(THREADS)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if alloc_tuning:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    env.update(extra_env or {})
    cmd = [sys.executable, __file__, "--worker", task, name, layout, dtype]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"task": task, "model": name, "layout": layout, "dtype": dtype, "error": proc.stderr[-2000:]}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["alloc_tuning"] = alloc_tuning
    out["wall_s"] = time.perf_counter() - t
    print(f"  {task:6s} {name:9s} {layout:13s} {dtype:5s} done in {out['wall_s']:.0f}s", file=sys.stderr, flush=True)
    return out


def matmul_gflops(dtype: str = "fp32", n: int = 4096, repeats: int = 5) -> float:
    import torch

    torch.set_num_threads(THREADS)
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    if dtype == "bf16":
        a, b = a.bfloat16(), b.bfloat16()
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="ours only (no peers, no alloc comparison)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "models.json")
    args = parser.parse_args()
    import torch

    import kidneyssl

    load_before = os.getloadavg()
    started = time.time()
    ceiling = matmul_gflops("fp32")
    ceiling_bf16 = matmul_gflops("bf16")
    print(f"matmul fp32 {ceiling:.0f} GFLOP/s, bf16 {ceiling_bf16:.0f} GFLOP/s", file=sys.stderr)
    models = ["ours"] if args.quick else ["ours", "dynunet", "segresnet"]
    runs = []
    for name in models:
        runs.append(_run_worker("flops", name, "contiguous", "fp32"))
        for layout in ("contiguous", "channels_last"):
            env = {"BENCH_PROFILE": "1"} if name == "ours" and layout == "channels_last" else None
            runs.append(_run_worker("train", name, layout, "fp32", extra_env=env))
            runs.append(_run_worker("infer", name, layout, "fp32"))
        if name == "ours":
            runs.append(_run_worker("infer", name, "channels_last", "bf16"))
            if not args.quick:
                runs.append(_run_worker("infer", name, "channels_last", "fp32", alloc_tuning=False))
                runs.append(_run_worker("train", name, "channels_last", "fp32", alloc_tuning=False))
    table = _summarize(runs, ceiling, ceiling_bf16)
    result = {
        "benchmark": "models",
        "kidneyssl_version": kidneyssl.__version__,
        "torch": torch.__version__,
        "threads": THREADS,
        "cpu": _cpu_name(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "seconds": time.time() - started,
        "train_input": list(TRAIN_SHAPE),
        "infer_input": list(INFER_SHAPE),
        "matmul_gflops_fp32": ceiling,
        "matmul_gflops_bf16": ceiling_bf16,
        "table": table,
        "runs": runs,
    }
    text = json.dumps(result, indent=2)
    print(text)
    from kidneyssl.io.atomic import atomic_write_text

    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, text + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _summarize(runs: list[dict], ceiling: float, ceiling_bf16: float) -> list[dict]:
    flops = {r["model"]: r for r in runs if r["task"] == "flops" and "error" not in r}
    rows = []
    train_key = "gflop_forward_train_" + "x".join(map(str, TRAIN_SHAPE[2:]))
    infer_key = "gflop_forward_eval_" + "x".join(map(str, INFER_SHAPE[2:]))
    for r in runs:
        if r["task"] not in ("train", "infer") or "error" in r or r["model"] not in flops:
            continue
        f = flops[r["model"]]
        row = {"model": r["model"], "task": r["task"], "layout": r["layout"], "dtype": r["dtype"],
               "alloc_tuning": r["alloc_tuning"], "parameters": f["parameters"],
               "peak_rss_delta_mb": round(r["peak_rss_delta_mb"])}
        if r["task"] == "train":
            gflop = 3 * f[train_key]
            row.update(gflop_per_step=round(gflop, 1), seconds=round(r["step_s_min"], 3),
                       seconds_median=round(r["step_s_median"], 3))
            sec = r["step_s_min"]
        else:
            gflop = f[infer_key]
            row.update(gflop_per_forward=round(gflop, 1), seconds=round(r["infer_s_min"], 2))
            sec = r["infer_s_min"]
        achieved = gflop / sec
        local = (r["local_matmul_gflops_before"] + r["local_matmul_gflops_after"]) / 2
        row["achieved_gflops"] = round(achieved, 1)
        row["local_matmul_gflops"] = round(local, 1)
        row["fraction_of_local_matmul"] = round(achieved / local, 3)
        row["fraction_of_matmul_fp32"] = round(achieved / ceiling, 3)
        if r["dtype"] == "bf16":
            row["fraction_of_matmul_bf16"] = round(achieved / ceiling_bf16, 3)
            row["bf16_vs_fp32"] = r.get("bf16_vs_fp32")
        rows.append(row)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        task, name, layout, dtype = sys.argv[2:6]
        print(json.dumps(worker(task, name, layout, dtype)))
    else:
        main()
