"""Phantom generator speed: per-case generation time and a 24-case demo dataset with 2 workers.

Usage: python3 benchmarks/bench_phantoms.py [--cases 24] [--workers 2] [--full]
Prints JSON and writes benchmarks/results/phantoms.json. Target: 24 demo cases < 20 s, 2 workers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from kidneyssl.phantoms import case_seed, generate_case, write_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--full", action="store_true", help="also time 2 full-resolution cases")
    args = parser.parse_args()
    generate_case(0)  # warm up imports
    per_case = []
    for i in range(6):
        start = time.perf_counter()
        image, _ = generate_case(case_seed(0, i))
        per_case.append((time.perf_counter() - start, image.array.size))
    result = {
        "cpu_count": os.cpu_count(),
        "load_avg_1min": os.getloadavg()[0],
        "demo_generate_s_mean": float(np.mean([t for t, _ in per_case])),
        "demo_voxels_mean": float(np.mean([n for _, n in per_case])),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for workers in sorted({1, args.workers}):
            start = time.perf_counter()
            write_dataset(Path(tmp) / f"w{workers}", cases=args.cases, seed=0, workers=workers)
            result[f"demo_dataset_{args.cases}_cases_workers{workers}_s"] = time.perf_counter() - start
    if args.full:
        times = []
        for i in range(2):
            start = time.perf_counter()
            image, _ = generate_case(case_seed(0, i), "full")
            times.append(time.perf_counter() - start)
            result[f"full_case{i}_shape"] = list(image.array.shape)
        result["full_generate_s_mean"] = float(np.mean(times))
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    text = json.dumps(result, indent=2)
    print(text)
    out = Path(__file__).parent / "results" / "phantoms.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text + "\n")


if __name__ == "__main__":
    main()
