"""The compiled-model cache: compiling a half volume's model and its first inference, with an empty
cache folder (compiled now) and with a warm one (imported from ``<cache>/openvino-compiled``;
``results/openvino_compile_cache_ov_cache_dir.json`` is the same benchmark with OpenVINO's own
``CACHE_DIR``, used before it was found unsafe across processes), in fresh processes
taken in turn; the paper network (random weights) and the two half-volume shapes of
``bench_predict.py``'s 300 x 512 x 512 case, bf16 hint, 2 threads.

    python benchmarks/bench_ov_compile_cache.py [--rounds 3]

JSON to stdout and ``benchmarks/results/openvino_compile_cache.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHAPES = ((1, 1, 96, 256, 144), (1, 1, 96, 256, 160))

CHILD = r"""
import json, sys, time, numpy as np, torch
torch.set_num_threads(2)
from kidneyssl.inference.ov_backend import OpenVINONetwork
net = OpenVINONetwork(sys.argv[1], "bf16", 2)
rows = []
for shape in json.loads(sys.argv[2]):
    x = torch.randn(*shape)
    t0 = time.perf_counter(); net._compile(tuple(shape)); compile_s = time.perf_counter() - t0
    t0 = time.perf_counter(); net(x); first_s = time.perf_counter() - t0
    rows.append({"shape": shape, "compile_s": round(compile_s, 3), "first_infer_s": round(first_s, 3)})
    net.release()
print(json.dumps(rows))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from bench_predict import cpu_description
    from kidneyssl.config import load_preset
    from kidneyssl.inference.ov_backend import exported_model
    from kidneyssl.models import build_segmentation_model

    import torch

    torch.manual_seed(0)
    exports = Path(tempfile.mkdtemp(prefix="bench_ovcc_exports_"))
    xml = exported_model(build_segmentation_model(load_preset("paper").model, reconstruction=False).eval(), exports)
    warm = Path(tempfile.mkdtemp(prefix="bench_ovcc_warm_"))
    load = os.getloadavg()

    def run(cache: Path) -> list[dict]:
        env = dict(os.environ, KIDNEYSSL_CACHE_DIR=str(cache), PYTHONPATH=str(ROOT / "src"))
        out = subprocess.run([sys.executable, "-c", CHILD, str(xml), json.dumps(SHAPES)], env=env,
                             capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    run(warm)  # fills the warm cache
    rounds = []
    for _ in range(args.rounds):
        cold = Path(tempfile.mkdtemp(prefix="bench_ovcc_cold_"))
        rounds.append({"empty_cache": run(cold), "warm_cache": run(warm)})
        shutil.rmtree(cold, ignore_errors=True)

    def total(kind: str) -> list[float]:
        return [round(sum(r["compile_s"] + r["first_infer_s"] for r in rnd[kind]), 3) for rnd in rounds]

    result = {"benchmark": "openvino_compile_cache", "shapes": SHAPES, "precision": "bf16", "threads": 2,
              "rounds": rounds, "compile_plus_first_infer_s": {"empty_cache": total("empty_cache"),
                                                               "warm_cache": total("warm_cache")},
              "compile_s_mean": {k: round(sum(r["compile_s"] for rnd in rounds for r in rnd[k]) / (2 * len(rounds)), 3)
                                 for k in ("empty_cache", "warm_cache")},
              "cpu": cpu_description(), "load_average_start": load, "load_average_end": os.getloadavg(),
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    (HERE / "results" / "openvino_compile_cache.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    shutil.rmtree(warm, ignore_errors=True)
    shutil.rmtree(exports, ignore_errors=True)


if __name__ == "__main__":
    main()
