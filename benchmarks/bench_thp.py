"""Transparent huge pages for PyTorch's CPU tensors (``THP_MEM_ALLOC_ENABLE``) on and off, in one run:
the paper network's fused CPU inference pass on one KiTS-size half (96x256x144, what ``predict``
runs for a 300x512x512 scan at 1x0.8x0.8 mm), a paper-network CPU training step at 64x128x64, and
40 training steps of the demo's network on its 32x48x48 crops (what ``kidneyssl demo`` trains).

Each measurement is a fresh subprocess (2 threads) with the variable set explicitly, on and off
alternating; each reports every call's wall time with the process's user and system CPU seconds
and page faults, so the cost of faulting memory in (system time) is seen apart from the arithmetic
(user time). The JSON records whether this machine hands its free pages to a hypervisor
(:func:`kidneyssl.system.free_pages_go_to_hypervisor`, by which ``predict`` and ``locate`` decide),
the kernel's huge page settings and the load average.

    python benchmarks/bench_thp.py [--rounds 2]

JSON to stdout and to ``benchmarks/results/thp.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TASKS = ("infer", "train", "demo_train")  # demo_train: each call is 10 steps

CHILD = r"""
import kidneyssl, json, resource, sys, time, torch
torch.set_num_threads(2)
torch.manual_seed(0)
from kidneyssl.config import ModelConfig, SegTrainConfig, load_preset
from kidneyssl.models import build_segmentation_model

def usage():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt

task, calls = sys.argv[1], []
if task == "infer":
    m = build_segmentation_model(ModelConfig(), reconstruction=False).eval()
    x = torch.randn(1, 1, 96, 256, 144)
    def step():
        with torch.inference_mode():
            m.inference_forward(x)
    n = 3
else:
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    demo = task == "demo_train"
    model_cfg = load_preset("demo").model if demo else ModelConfig()
    m = build_segmentation_model(model_cfg)
    x = torch.randn(1, 1, *((32, 48, 48) if demo else (64, 128, 64)))
    y = (x > 1.0).float()
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-2)
    crit, cfg = BCEDiceLoss(), SegTrainConfig()
    def one_step():
        opt.zero_grad(set_to_none=True)
        segmentation_loss(m(x), x, y, 0, 10, cfg, crit)["total"].backward()
        opt.step()
    def step():
        for _ in range(10 if demo else 1):
            one_step()
    n = 4
for _ in range(n):
    u0, s0, f0 = usage(); t = time.perf_counter()
    step()
    wall = time.perf_counter() - t; u1, s1, f1 = usage()
    calls.append({"wall_s": round(wall, 3), "user_s": round(u1 - u0, 2), "system_s": round(s1 - s0, 2),
                  "minor_faults": f1 - f0})
print(json.dumps({"calls": calls, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def machine() -> dict:
    from bench_predict import cpu_description  # this folder is on sys.path when run as a script

    from kidneyssl.system import free_pages_go_to_hypervisor

    reporting = "/sys/module/page_reporting/parameters"
    return {
        "cpu": cpu_description(),
        "kernel": os.uname().release,
        "transparent_hugepage": {k: _read(f"/sys/kernel/mm/transparent_hugepage/{k}") for k in ("enabled", "defrag")},
        "free_pages_go_to_hypervisor": free_pages_go_to_hypervisor(),
        "page_reporting": ({p.name: _read(str(p)) for p in sorted(Path(reporting).iterdir())}
                           if Path(reporting).is_dir() else None),
        "kidneyssl_thp": {"import kidneyssl": "1",
                          "predict, locate": "0" if free_pages_go_to_hypervisor() else "1"},
    }


def run(task: str, thp: str) -> dict:
    env = dict(os.environ, THP_MEM_ALLOC_ENABLE=thp, PYTHONPATH=str(ROOT / "src"))
    out = subprocess.run([sys.executable, "-c", CHILD, task], env=env, capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(task=task, thp=thp, load_average=os.getloadavg())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    result: dict = {"benchmark": "thp", "threads": 2, "machine": machine(),
                    "load_average_start": os.getloadavg(), "runs": []}
    for r in range(args.rounds):
        for task in TASKS:
            for thp in (("1", "0") if r % 2 == 0 else ("0", "1")):
                row = run(task, thp)
                row["round"] = r
                result["runs"].append(row)
                print(task, thp, [c["wall_s"] for c in row["calls"]], file=sys.stderr, flush=True)
    summary = {}
    for task in TASKS:
        for thp in ("1", "0"):
            rows = [x for x in result["runs"] if x["task"] == task and x["thp"] == thp]
            first = [x["calls"][0]["wall_s"] for x in rows]
            later = [c["wall_s"] for x in rows for c in x["calls"][1:]]
            summary[f"{task}_thp{thp}"] = {
                "first_call_s_median": statistics.median(first),
                "later_calls_s_median": statistics.median(later),
                "later_calls_system_s_median": statistics.median(
                    c["system_s"] for x in rows for c in x["calls"][1:]),
            }
        on, off = summary[f"{task}_thp1"], summary[f"{task}_thp0"]
        summary[f"{task}_on_over_off_later_calls"] = round(on["later_calls_s_median"] / off["later_calls_s_median"], 3)
        summary[f"{task}_on_over_off_first_call"] = round(on["first_call_s_median"] / off["first_call_s_median"], 3)
    result.update(summary=summary, load_average_end=os.getloadavg(), seconds=round(time.perf_counter() - started, 1))
    text = json.dumps(result, indent=1)
    (HERE / "results" / "thp.json").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
