"""Before/after in one run: fp32 inference of one 128x256x128 half volume (paper network) and one
CPU training step at 64x128x64, for a reference git revision and the working tree, interleaved.

Each measurement runs in a fresh subprocess (2 threads, ``torch.inference_mode`` for inference)
with ``PYTHONPATH`` pointing at either the reference sources (``git archive <rev> src``) or this
tree's ``src``. The fp32 matmul rate (2048^2, 2 threads) is measured before and after each
timing; the training step is reported as a fraction of it (training FLOPs = 3 x forward, counted
by ``torch.utils.flop_counter``). On a shared machine compare the ratios, not the seconds; the
load average is recorded.

    python benchmarks/bench_infer_half.py [--ref HEAD~3] [--rounds 1]

JSON to stdout and to ``benchmarks/results/infer_half.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

CHILD = r"""
import kidneyssl  # first, as the CLI does: it sets the allocator's environment before torch loads
import json, os, sys, time, torch
torch.set_num_threads(2)
from kidneyssl.config import ModelConfig
from kidneyssl.models import build_segmentation_model

def matmul(n=2048):
    a, b = torch.randn(n, n), torch.randn(n, n); a @ b
    t = time.perf_counter(); a @ b
    return 2 * n**3 / (time.perf_counter() - t) / 1e9

task = sys.argv[1]
torch.manual_seed(0)
out = {"task": task, "matmul_before": matmul()}
if task == "infer":
    m = build_segmentation_model(ModelConfig(), reconstruction=False).eval()
    x = torch.randn(1, 1, 128, 256, 128)
    times = []
    # inference's own pass: inference_forward where it exists (forward switched to it before)
    infer = getattr(m, "inference_forward", None) or (lambda t: m(t).logits)
    with torch.inference_mode():
        for _ in range(2):
            t = time.perf_counter(); y = infer(x); times.append(time.perf_counter() - t)
    out.update(seconds=times, seconds_min=min(times), logits_sum=float(y.double().sum()),
               logits_head=[float(v) for v in y.flatten()[:: 1 << 18][:16]])
else:
    from torch.utils.flop_counter import FlopCounterMode
    from kidneyssl.config import SegTrainConfig
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss
    m = build_segmentation_model(ModelConfig())
    x = torch.randn(1, 1, 64, 128, 64)
    y = (x > 1.0).float()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        m(torch.randn(1, 1, 32, 64, 32))
    gflop = 3 * fc.get_total_flops() * 8 / 1e9
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, weight_decay=1e-2)
    crit, cfg = BCEDiceLoss(), SegTrainConfig()
    times = []
    for _ in range(4):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = segmentation_loss(m(x), x, y, 0, 10, cfg, crit)["total"]
        loss.backward(); opt.step()
        times.append(time.perf_counter() - t)
    out.update(seconds=times, seconds_min=min(times[1:]), gflop_per_step=gflop)
out["matmul_after"] = matmul()
out["load_average"] = os.getloadavg()
print(json.dumps(out))
"""


def _run(src: Path, task: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, "-c", CHILD, task], env=env, capture_output=True, text=True)
    if proc.returncode:
        return {"task": task, "error": proc.stderr[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", default="HEAD", help="git revision of the reference sources")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tasks", default="infer,train")
    p.add_argument("--out", type=Path, default=HERE / "results" / "infer_half.json")
    args = p.parse_args()
    rev = subprocess.run(["git", "rev-parse", args.ref], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    started, load_start = time.time(), os.getloadavg()
    runs: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "ref.tar"
        subprocess.run(["git", "archive", "-o", str(archive), rev, "src"], cwd=ROOT, check=True)
        with tarfile.open(archive) as tar:
            tar.extractall(tmp)
        trees = {"reference": Path(tmp) / "src", "candidate": ROOT / "src"}
        for rnd in range(args.rounds):
            for task in args.tasks.split(","):
                for name, src in trees.items():
                    r = _run(src, task)
                    r.update(tree=name, round=rnd)
                    runs.append(r)
                    print(f"{task} {name}: {r.get('seconds_min', r.get('error'))}", file=sys.stderr, flush=True)
    summary: dict = {}
    for task in args.tasks.split(","):
        best = {n: min((r["seconds_min"] for r in runs if r["task"] == task and r["tree"] == n
                        and "error" not in r), default=None) for n in ("reference", "candidate")}
        row: dict = {f"{n}_s": best[n] for n in best}
        if best["reference"] and best["candidate"]:
            row["candidate_over_reference"] = best["candidate"] / best["reference"]
        if task == "train":
            for n in ("reference", "candidate"):
                rs = [r for r in runs if r["task"] == task and r["tree"] == n and "error" not in r]
                if rs:
                    r = min(rs, key=lambda r: r["seconds_min"])
                    local = (r["matmul_before"] + r["matmul_after"]) / 2
                    row[f"{n}_fraction_of_matmul_fp32"] = r["gflop_per_step"] / r["seconds_min"] / local
                    row[f"{n}_matmul_gflops"] = local
        if task == "infer":
            ref = [r for r in runs if r["task"] == task and r["tree"] == "reference" and "error" not in r]
            cand = [r for r in runs if r["task"] == task and r["tree"] == "candidate" and "error" not in r]
            if ref and cand:
                row["max_abs_logit_diff_sampled"] = max(abs(a - b) for a, b in
                                                        zip(ref[0]["logits_head"], cand[0]["logits_head"]))
        summary[task] = row
    result = {"benchmark": "infer_half", "reference_rev": rev, "threads": 2, "cpu_count": os.cpu_count(),
              "load_average_start": load_start, "load_average_end": os.getloadavg(),
              "seconds": time.time() - started, "summary": summary, "runs": runs}
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
