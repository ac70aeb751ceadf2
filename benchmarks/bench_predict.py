"""End-to-end prediction of one KiTS-size case: time per stage and peak memory.

A synthetic 300 x 512 x 512 CT at 1 x 0.8 x 0.8 mm (KiTS19 orientation, int16, .nii.gz) is
predicted with the paper's ModelConfig (random weights: the time does not depend on them) on
``--threads`` cores, in a fresh subprocess per configuration so that ``ru_maxrss`` is that run's
peak. Stages: read, preprocess, infer, postprocess, restore, write.

    python benchmarks/bench_predict.py                      # default config (auto strategy)
    python benchmarks/bench_predict.py --variants auto,halves-bf16,sliding
    python benchmarks/bench_predict.py --measure-factor     # activation bytes/voxel of the model

JSON goes to stdout and to ``benchmarks/results/predict.json``. Target (issue 9): < 15 s, < 4 GB with no flags.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPE = (300, 512, 512)  # canonical (z, y, x)
SPACING = (1.0, 0.8, 0.8)
TARGET_S = 15.0
TARGET_MB = 4096.0

VARIANTS = {  # name -> child options
    "auto": ["--precision", "auto"],  # what `predict` with no flags does: precision and budget auto
    "auto-bf16": ["--bf16"],
    "halves": ["--strategy", "halves"],
    "halves-bf16": ["--strategy", "halves", "--bf16"],
    "sliding": ["--strategy", "sliding"],
    "sliding-bf16": ["--strategy", "sliding", "--bf16"],
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_case(folder: Path) -> tuple[Path, Path]:
    """Write the synthetic scan and a random-weight paper checkpoint into ``folder``."""
    import numpy as np
    import torch

    from kidneyssl.config import config_to_dict, load_preset
    from kidneyssl.io.geometry import Geometry
    from kidneyssl.io.volumes import write_volume
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.io.checkpoint import save_checkpoint

    rng = np.random.default_rng(0)
    z, y, x = np.ogrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    zz, yy, xx = z * SPACING[0], y * SPACING[1], x * SPACING[2]
    cy, cx = SHAPE[1] * SPACING[1] / 2, SHAPE[2] * SPACING[2] / 2
    body = ((yy - cy) / 150.0) ** 2 + ((xx - cx) / 180.0) ** 2 < 1.0
    img = np.full(SHAPE, -1000, np.int16)
    img[np.broadcast_to(body, SHAPE)] = 40
    for side in (-1, 1):
        r = ((zz - 150.0) / 55.0) ** 2 + ((yy - cy - 40.0) / 30.0) ** 2 + ((xx - cx - side * 75.0) / 28.0) ** 2
        img[r < 1.0] = 200
    img += rng.integers(-20, 21, size=SHAPE, dtype=np.int16)
    affine = np.eye(4)
    affine[:3, :3] = [[0.0, 0.0, -SPACING[2]], [0.0, -SPACING[1], 0.0], [-SPACING[0], 0.0, 0.0]]  # I, P, L
    scan = folder / "case_00000" / "imaging.nii.gz"
    scan.parent.mkdir(parents=True, exist_ok=True)
    write_volume(img, Geometry(affine, SHAPE), scan)
    cfg = load_preset("paper")
    torch.manual_seed(0)
    ckpt = folder / "paper_random.pt"
    save_checkpoint(ckpt, kind="segmentation", config=config_to_dict(cfg),
                    model_state=build_segmentation_model(cfg.model).state_dict())
    return scan, ckpt


def child(args: argparse.Namespace) -> None:
    """One prediction in this (fresh) process; prints one JSON line."""
    import kidneyssl  # noqa: F401  first, as the CLI does: it sets torch's allocator environment
    import torch

    torch.set_num_threads(args.threads)
    base_mb = _peak_mb()
    import dataclasses

    from kidneyssl.inference.inputs import PredictionInput, read_input
    from kidneyssl.inference.predict import load_model, predict_volume
    from kidneyssl.io.volumes import write_mask

    import dataclasses

    from kidneyssl.inference.sliding_window import resolve_memory_budget_mb, resolve_precision

    model, cfg = load_model(args.ckpt)
    precision = resolve_precision(args.precision) if args.precision else ("bf16" if args.bf16 else "fp32")
    if args.memory_budget_mb is not None:
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(
            cfg.inference, memory_budget_mb=args.memory_budget_mb))
    after_load_mb = _peak_mb()
    t0 = time.perf_counter()
    volume = read_input(PredictionInput("case_00000", "00000", Path(args.scan)))
    read_s = time.perf_counter() - t0
    budget_mb = resolve_memory_budget_mb(cfg.inference)
    res = predict_volume(model, volume, cfg, bf16=precision == "bf16", strategy=args.strategy)
    t0 = time.perf_counter()
    write_mask(res.mask, Path(args.out) / "prediction_00000.nii.gz", like=volume.geometry)
    write_s = time.perf_counter() - t0
    # A random-weight network marks ~half the volume, a noisy mask that compresses slowly; also time
    # writing a kidney-sized mask (the synthetic kidneys, > 150 HU) to show a realistic write.
    kidneys = (volume.array > 150).astype("uint8")
    t0 = time.perf_counter()
    write_mask(kidneys, Path(args.out) / "kidneys_00000.nii.gz", like=volume.geometry)
    write_kidney_s = time.perf_counter() - t0
    del kidneys
    stages = {"read": read_s, **res.timings, "write": write_s}
    print(json.dumps({
        "strategy": res.strategy, "precision": precision, "bf16": precision == "bf16",
        "memory_budget_mb": budget_mb, "checkpoint_memory_budget_mb": cfg.inference.memory_budget_mb,
        "threads": torch.get_num_threads(),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "total_s": round(sum(stages.values()), 2),
        "peak_rss_mb": round(_peak_mb(), 1),
        "rss_after_imports_mb": round(base_mb, 1), "rss_after_model_load_mb": round(after_load_mb, 1),
        "mask_voxels": int(res.mask.sum()),
        "write_kidney_sized_mask_s": round(write_kidney_s, 3),
    }))


def measure_factor(args: argparse.Namespace) -> dict:
    """Peak RSS increase per input voxel of one forward pass (fresh process per size)."""
    code = (
        "import kidneyssl,resource,sys,time,torch;torch.set_num_threads(%d);"
        "from kidneyssl.config import load_preset;from kidneyssl.models import build_segmentation_model;"
        "m=build_segmentation_model(load_preset('paper').model,reconstruction=False).eval();"
        "x=torch.randn(1,1,%%d,%%d,%%d);r0=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
        "t=time.perf_counter();ac=torch.autocast('cpu',dtype=torch.bfloat16,enabled=%%s)\n"
        "with torch.inference_mode(), ac: y=m(x).logits\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss-r0)*1024/x.numel(), time.perf_counter()-t)"
    ) % args.threads
    from kidneyssl.inference.sliding_window import cpu_has_native_bf16

    # bfloat16 without native support runs PyTorch's reference convolution (minutes per call)
    native_bf16 = cpu_has_native_bf16()
    precisions = (False, True) if native_bf16 else (False,)
    rows = []
    for shape in ((64, 128, 128), (96, 256, 160)):
        for bf16 in precisions:
            out = subprocess.run([sys.executable, "-c", code % (*shape, bf16)], capture_output=True,
                                 text=True, check=True)
            bpv, secs = (float(v) for v in out.stdout.split())
            rows.append({"input": "x".join(map(str, shape)), "bf16": bf16,
                         "bytes_per_voxel": round(bpv, 1), "forward_s": round(secs, 2)})
    return {"benchmark": "predict_activation_factor", "threads": args.threads, "rows": rows,
            "native_bf16": native_bf16, "load_average": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="auto", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--memory-budget-mb", type=int, default=None)
    parser.add_argument("--measure-factor", action="store_true")
    parser.add_argument("--workdir", default=None, help="reuse a folder holding the scan/checkpoint")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scan", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--strategy", default="auto", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--make-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_case:
        make_case(Path(args.make_case))
        return
    if args.child:
        child(args)
        return
    if args.measure_factor:
        result = measure_factor(args)
        name = "predict_factor.json"
    else:
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_predict_"))
        scan, ckpt = work / "case_00000" / "imaging.nii.gz", work / "paper_random.pt"
        if not (scan.is_file() and ckpt.is_file()):
            # in a subprocess: a child started by fork+exec can report its parent's peak RSS as
            # its own ru_maxrss, so the parent must stay small
            t0 = time.perf_counter()
            subprocess.run([sys.executable, __file__, "--make-case", str(work)], check=True)
            print(f"wrote synthetic case in {time.perf_counter() - t0:.1f} s: {scan}", file=sys.stderr)
        runs = {}
        for name in args.variants.split(","):
            cmd = [sys.executable, __file__, "--child", "--scan", str(scan), "--ckpt", str(ckpt),
                   "--out", str(work), "--threads", str(args.threads), *VARIANTS[name]]
            if args.memory_budget_mb is not None:
                cmd += ["--memory-budget-mb", str(args.memory_budget_mb)]
            env = dict(os.environ, KIDNEYSSL_NO_PROGRESS="1")
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                runs[name] = {"error": out.stderr.strip().splitlines()[-1:] or ["?"]}
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["meets_target"] = row["total_s"] < TARGET_S and row["peak_rss_mb"] < TARGET_MB
            runs[name] = row
            print(f"{name}: {row['total_s']} s, {row['peak_rss_mb']} MB", file=sys.stderr)
        result = {"benchmark": "predict_end_to_end", "case": {"shape": SHAPE, "spacing_mm": SPACING,
                  "format": "nii.gz int16, KiTS19 orientation (I, P, L)"}, "model": "paper ModelConfig",
                  "threads": args.threads, "target": {"seconds": TARGET_S, "peak_rss_mb": TARGET_MB},
                  "cpu_count": os.cpu_count(), "load_average": os.getloadavg(), "runs": runs}
        name = "predict.json"
    text = json.dumps(result, indent=2)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(text + "\n")


if __name__ == "__main__":
    main()
