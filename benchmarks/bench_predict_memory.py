"""Peak memory and time of ``kidneyssl predict`` with no flags on one KiTS-size case (the scan and
random-weight paper checkpoint of ``bench_predict.py``), with glibc's mmap threshold fixed as
``predict`` fixes it (``kidneyssl.system.fix_mmap_threshold``) and with glibc's dynamic threshold
(the call made a no-op), interleaved in fresh processes: each variant's first run with an empty
cache folder ("cold": export, probe and bf16 mask check), then with that cache ("warm").

    python benchmarks/bench_predict_memory.py [--rounds 3] [--workdir DIR]

JSON to stdout and ``benchmarks/results/predict_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: Run before the CLI in the "dynamic" variant: glibc keeps its dynamic threshold.
DYNAMIC = "import kidneyssl.system\nkidneyssl.system.fix_mmap_threshold = lambda nbytes=0: False\n"
VARIANTS = ("fixed", "dynamic")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", default=None, help="a folder holding bench_predict.py's case (made if empty)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(ROOT / "src"))
    from bench_predict import _cli_predict, cpu_description

    def run_predict(variant: str, out: Path, cache: Path) -> dict:
        row = _cli_predict(ROOT / "src", scan.parent.parent, ckpt, out, args.threads, cache, [],
                           prelude=DYNAMIC if variant == "dynamic" else "")
        if "error" in row or "peak_rss_mb" not in row:
            raise RuntimeError(f"predict ({variant}) failed:\n{row.get('error', '')}")
        return {"variant": variant, **row}

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_predict_memory_"))
    scan = work / "case_00000" / "imaging.nii.gz"
    ckpt = work / "paper_random.pt"
    if not (scan.is_file() and ckpt.is_file()):
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, str(HERE / "bench_predict.py"), "--make-case", str(work)], check=True,
                       env=dict(os.environ, PYTHONPATH=str(ROOT / "src")))
    load = os.getloadavg()
    runs = []
    for r in range(args.rounds):
        for variant in VARIANTS:
            cache = work / f"cache_{variant}_{r}"
            shutil.rmtree(cache, ignore_errors=True)
            for state in ("cold", "warm"):
                row = run_predict(variant, work / "out", cache)
                runs.append({**row, "round": r, "cache": state})
                print(json.dumps(runs[-1]), file=sys.stderr)
            shutil.rmtree(cache, ignore_errors=True)

    def stat(variant: str, state: str, key: str) -> dict:
        values = [row[key] for row in runs if row["variant"] == variant and row["cache"] == state]
        return {"median": round(statistics.median(values), 2), "min": min(values), "max": max(values)}

    summary = {f"{v}_{s}": {"peak_rss_mb": stat(v, s, "peak_rss_mb"), "read_to_written_s": stat(v, s, "read_to_written_s")}
               for v in VARIANTS for s in ("cold", "warm")}
    result = {"benchmark": "predict_memory", "threads": args.threads, "rounds": args.rounds,
              "case": "300x512x512 at 1x0.8x0.8 mm, kidney phantom (bench_predict.py), random paper weights",
              "summary": summary, "runs": runs, "cpu": cpu_description(), "load_average_start": load,
              "load_average_end": os.getloadavg(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (HERE / "results" / "predict_memory.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=1))


if __name__ == "__main__":
    main()
