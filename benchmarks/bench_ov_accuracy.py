"""How close are OpenVINO's logits to PyTorch's? For each GroupNorm export form
(``ov_backend.GROUP_NORM_FORMS``: ``channel`` is shipped, ``merged`` is the form of exports before
version 3, ``torch`` is PyTorch's own) and precision, the logits of one half volume of a prepared
case against PyTorch float32 (the reference masks come from it): largest and mean absolute
difference and voxels whose sign (mask) flips; and on a crop of it against float64.

    python benchmarks/bench_ov_accuracy.py --checkpoint RUN/best.pt --cache CACHE [--case case_00001]

JSON to stdout and ``benchmarks/results/openvino_fp32_accuracy.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--cache", required=True, help="a prepared cache (kidneyssl prepare)")
    ap.add_argument("--case", default=None, help="default: the cache's first case")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="openvino_fp32_accuracy.json")
    args = ap.parse_args()

    import torch
    from bench_predict import cpu_description

    from kidneyssl.inference import ov_backend
    from kidneyssl.inference.predict import load_model
    from kidneyssl.inference.strategy import context_voxels
    from kidneyssl.preprocessing.halves import Side, half_bounds
    from kidneyssl.preprocessing.split_plane import find_split_x

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    engine, cfg = load_model(args.checkpoint, backend="torch", precision="fp32")
    net = engine.module
    case = args.case or sorted(p.name for p in Path(args.cache).iterdir() if p.is_dir())[0]
    image = np.load(Path(args.cache) / case / "image.npy")
    split_x = int(find_split_x(None, image))
    cols = half_bounds(image.shape[2], split_x, context_voxels(cfg.inference, cfg.preprocess.spacing_mm[2]),
                       cfg.preprocess.pad_multiple)[Side.RIGHT]  # the right half as predict runs it
    half = torch.from_numpy(np.ascontiguousarray(image[None, None, :, :, cols]))
    z, y = half.shape[2] // 2, half.shape[3] // 2  # a crop small enough for a float64 run
    crop = half[:, :, z - 24:z + 24, y - 80:y + 80, :128].contiguous()
    with torch.inference_mode():
        ref32 = net(half).logits.numpy()
        ref64 = copy.deepcopy(net).double()(crop.double()).logits.numpy()

    rows = []
    for form in ov_backend.GROUP_NORM_FORMS:
        xml = ov_backend.export_openvino(net, Path(tempfile.mkdtemp(prefix=f"bench_ovacc_{form}_")), group_norm=form)
        for precision in ("fp32", "bf16"):
            ovnet = ov_backend.OpenVINONetwork(xml, precision, args.threads)
            out64 = ovnet(crop).numpy()
            ovnet(half)
            t0 = time.perf_counter()
            out = ovnet(half).numpy()
            seconds = time.perf_counter() - t0
            ovnet.release()
            diff, diff64 = np.abs(out - ref32), np.abs(out64 - ref64)
            rows.append({"group_norm": form, "precision": precision, "half_warm_s": round(seconds, 2),
                         "vs_torch_fp32_max_abs": float(diff.max()), "vs_torch_fp32_mean_abs": float(diff.mean()),
                         "mask_flips_vs_torch_fp32": int(((out > 0) != (ref32 > 0)).sum()),
                         "crop_vs_float64_max_abs": float(diff64.max())})
            print(json.dumps(rows[-1]), flush=True)
    with torch.inference_mode():
        torch_vs64 = float(np.abs(net(crop).logits.numpy() - ref64).max())
    result = {"benchmark": "openvino_fp32_accuracy", "checkpoint": str(args.checkpoint), "case": case,
              "half_shape": list(half.shape[2:]), "crop_shape": list(crop.shape[2:]),
              "mask_voxels_torch_fp32": int((ref32 > 0).sum()), "logit_abs_max": float(np.abs(ref32).max()),
              "torch_fp32_crop_vs_float64_max_abs": torch_vs64, "threads": args.threads,
              "cpu": cpu_description(), "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "rows": rows}
    out_path = HERE / "results" / args.out
    out_path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
