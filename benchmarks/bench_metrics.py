"""Metric speed on KiTS-size masks: kidneyssl's compute_case_metrics vs MONAI, same masks, same run.

Usage: python3 benchmarks/bench_metrics.py [--repeats 3] [--real N]
A synthetic 300 x 512 x 512 case at 1 x 0.8 x 0.8 mm: two ellipsoid kidneys as ground truth, the
prediction dilated by one voxel with one kidney clipped and a 20 mm false-positive blob 100 mm away
(the kind of error HD is for). Times (best of --repeats): our full row (Dice, HD, HD95, BL%, nHD),
its parts, and MONAI's DiceMetric and compute_hausdorff_distance (HD, HD95) with spacing. With
../shared present, also up to --real real KiTS19 masks (prediction = mask eroded + shifted).
Prints JSON and writes benchmarks/results/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from kidneyssl.metrics import (
    boundary_length_difference,
    compute_case_metrics,
    hausdorff_distance,
    normalized_hausdorff,
)

SHARED = Path(os.environ.get("KIDNEYSSL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _best(fn, repeats: int) -> tuple[float, object]:
    best, value = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def _ellipsoid(shape, spacing, centre_mm, radii_mm) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    r2 = sum(((g * s - c) / r) ** 2 for g, s, c, r in zip(grids, spacing, centre_mm, radii_mm))
    return r2 <= 1.0


def synthetic_case() -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    shape, spacing = (300, 512, 512), (1.0, 0.8, 0.8)
    gt = _ellipsoid(shape, spacing, (150, 230, 140), (55, 30, 28))
    gt |= _ellipsoid(shape, spacing, (135, 230, 270), (60, 30, 28))
    pred = ndimage.binary_dilation(gt)
    pred[:110, :, :200] = False  # clip the top of one kidney
    pred |= _ellipsoid(shape, spacing, (150, 150, 200), (20, 20, 20))  # false positive
    return pred, gt, spacing


def _monai(pred: np.ndarray, gt: np.ndarray, spacing, repeats: int) -> dict[str, float]:
    import torch
    from monai.metrics import DiceMetric, compute_hausdorff_distance

    p = torch.from_numpy(np.ascontiguousarray(pred))[None, None]
    g = torch.from_numpy(np.ascontiguousarray(gt))[None, None]
    t_dice, d = _best(lambda: DiceMetric(include_background=True)(p.float(), g.float()), repeats)
    t_hd, hd = _best(lambda: compute_hausdorff_distance(p, g, include_background=True, spacing=spacing), repeats)
    t_hd95, hd95 = _best(lambda: compute_hausdorff_distance(p, g, include_background=True, spacing=spacing,
                                                            percentile=95), repeats)
    return {"dice": float(d.item()), "hd_mm": float(hd.item()), "hd95_mm": float(hd95.item()),
            "dice_s": t_dice, "hd_s": t_hd, "hd95_s": t_hd95, "hd_plus_hd95_s": t_hd + t_hd95}


def bench_case(name: str, pred, gt, spacing, repeats: int) -> dict:
    t_row, row = _best(lambda: compute_case_metrics(pred, gt, spacing), repeats)
    parts = {
        "hd_s": _best(lambda: hausdorff_distance(pred, gt, spacing), 1)[0],
        "bl_surface_s": _best(lambda: boundary_length_difference(pred, gt, spacing), 1)[0],
        "bl_perimeter_s": _best(lambda: boundary_length_difference(pred, gt, spacing, mode="perimeter"), 1)[0],
        "nhd_s": _best(lambda: normalized_hausdorff(pred, gt), 1)[0],
    }
    monai = _monai(pred, gt, spacing, repeats)
    return {
        "case": name, "shape": list(gt.shape), "spacing_mm": list(spacing),
        "gt_voxels": int(gt.sum()), "pred_voxels": int(pred.sum()),
        "kidneyssl_row_s": t_row, "kidneyssl_parts_s": parts,
        "kidneyssl": {k: row[k] for k in ("dice", "hd_mm", "hd95_mm", "bl_pct", "nhd")},
        "monai": monai,
        "agree": {k: abs(row[k] - monai[k]) < 1e-3 for k in ("dice", "hd_mm", "hd95_mm")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--real", type=int, default=2, help="real KiTS19 masks to include (0: none)")
    args = parser.parse_args()
    cases = [bench_case("synthetic 300x512x512", *synthetic_case(), repeats=args.repeats)]
    masks = sorted((SHARED / "kits19-masks").glob("case_*/segmentation.nii.gz"))[: args.real]
    for path in masks:
        from kidneyssl.io.volumes import read_volume

        vol = read_volume(path)
        gt = np.asarray(vol.array) > 0
        pred = np.roll(ndimage.binary_erosion(gt), 2, axis=2)
        cases.append(bench_case(path.parent.name, pred, gt, vol.geometry.spacing, args.repeats))
    result = {"cpu_count": os.cpu_count(), "load_avg_1min": os.getloadavg()[0], "repeats": args.repeats,
              "cases": cases}
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(__file__).resolve().parent / "results" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
