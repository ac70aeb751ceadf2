"""``kidneyssl demo`` as a new user runs it (no flags): wall time, peak memory, and both models'
test Dice and HD95 (issue 18: <= 5 min on 2 cores, test Dice >= 0.80 and HD95 < 20 mm for MwS and
MwoS).

The demo runs in a child process (``kidneyssl demo --out WORK``); its wall time and peak
RSS (``resource.getrusage(RUSAGE_CHILDREN)``) are measured here, the metrics read from its
``table1.csv``. ``--isa avx2`` runs it with PyTorch and oneDNN limited to AVX2 kernels
(``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``): an approximation of an AVX2-only CPU on
an AVX-512 machine, not a measurement on one. Run on an idle machine; the load average is recorded.

Usage: ``python benchmarks/bench_demo.py [--isa native|avx2] [--work DIR] [--set KEY=VALUE ...]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = {"wall_s_max": 300.0, "test_dice_min": 0.80, "test_hd95_mm_max": 20.0}


def test_metrics(table1: Path) -> dict:
    """Mean test Dice and HD95 per model from the demo's ``table1.csv``."""
    out: dict[str, dict[str, float]] = {}
    with table1.open() as f:
        for row in csv.DictReader(f):
            name = row["model"]
            if not name.endswith("(test)") or row["metric"] not in ("dice", "hd95_mm"):
                continue
            out.setdefault(name.removesuffix(" (test)"), {})[row["metric"]] = round(float(row["mean"]), 4)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--isa", choices=("native", "avx2"), default="native")
    parser.add_argument("--work", default="/tmp/kidneyssl-bench-demo")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default=None, help="results file stem (default demo or demo_avx2)")
    args = parser.parse_args()
    from bench_predict import cpu_description  # this folder is on sys.path when run as a script

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    env = dict(os.environ)
    if args.isa == "avx2":
        env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    cmd = [sys.executable, "-c", "import sys; from kidneyssl.cli.main import main; sys.exit(main())",
           "demo", "--out", str(work)]
    for o in args.overrides:
        cmd += ["--set", o]
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if proc.returncode != 0:
        sys.exit(f"kidneyssl demo failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    metrics = test_metrics(work / "run" / "report" / "table1.csv")
    met = {
        "wall": wall <= TARGETS["wall_s_max"],
        **{f"{m}_dice": v["dice"] >= TARGETS["test_dice_min"] for m, v in metrics.items()},
        **{f"{m}_hd95": v["hd95_mm"] < TARGETS["test_hd95_mm_max"] for m, v in metrics.items()},
    }
    result = {
        "benchmark": "demo",
        "command": "kidneyssl " + " ".join(cmd[3:]),
        "isa": args.isa,
        "cpu": cpu_description(),
        "threads": "torch default",
        "load_average_start": load_start,
        "load_average_end": os.getloadavg(),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(peak_mb),
        "test": metrics,
        "targets": TARGETS,
        "targets_met": met,
        "printed_summary": [line for line in proc.stdout.splitlines() if "Dice" in line or "finished" in line],
    }
    text = json.dumps(result, indent=2)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    name = args.name or ("demo" if args.isa == "native" else "demo_avx2")
    (RESULTS / f"{name}.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
