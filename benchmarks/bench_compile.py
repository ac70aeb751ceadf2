"""Same-run A/B: eager vs torch.compile (inductor) CPU inference of the paper network, fp32,
channels-last model and input, 2 threads, on a small volume (``SHAPE=z,y,x``, default
64,128,64). Writes ``benchmarks/results/compile_ab.json``. Issue 9 asked to measure compile and keep
it if it pays; on the AVX2 machine of round 3 it did not (slower per call, ~96 s to compile). That
was measured before the fused CPU pass (``models.cpu_forward``), which eager inference now takes."""
import json
import os
import time
from pathlib import Path

import torch

from kidneyssl.config import load_preset
from kidneyssl.models import build_segmentation_model

torch.set_num_threads(2)
shape = tuple(int(v) for v in os.environ.get("SHAPE", "64,128,64").split(","))
cfg = load_preset("paper")
torch.manual_seed(0)
model = build_segmentation_model(cfg.model, reconstruction=False).eval().to(memory_format=torch.channels_last_3d)
x = torch.randn(1, 1, *shape).contiguous(memory_format=torch.channels_last_3d)
def timed(fn, n=3):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn(x)
        ts.append(time.perf_counter() - t0)
    return ts
out = {"shape": shape, "load_start": os.getloadavg()}
out["eager_s"] = timed(model)
t0 = time.perf_counter()
compiled = torch.compile(model)
with torch.inference_mode():
    compiled(x)
out["compile_first_call_s"] = time.perf_counter() - t0
out["compiled_s"] = timed(compiled)
out["eager_again_s"] = timed(model)
with torch.inference_mode():
    a = model(x).logits; b = compiled(x).logits
out["max_abs_diff"] = float((a - b).abs().max())
out["load_end"] = os.getloadavg()
print(json.dumps(out, indent=1))
(Path(__file__).resolve().parent / "results" / "compile_ab.json").write_text(json.dumps(out, indent=1) + "\n")
