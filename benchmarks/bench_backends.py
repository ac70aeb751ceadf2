"""Backends and precisions for one half volume of the paper network, in one process, interleaved:
PyTorch's fused CPU pass (fp32, bf16 autocast) and OpenVINO (fp32, bf16 hint), OpenVINO compiled
for each static shape or once with free dimensions, and with PyTorch's GroupNorm in the export
(``torchgn``) against the per-channel form it uses (with each form's time share per operation
type); and whether the precision probe's small input
(``kidneyssl.inference.precision.PROBE_SHAPE``) ranks bf16 and fp32 as a half volume does.

    python benchmarks/bench_backends.py [--threads 2] [--rounds 2] [--shapes 96x256x160,96x256x144]

Per path and shape: compile time, first call (after compiling: kernel generation and first-touch
memory) and the best later call. Random weights (time does not depend on them). On a shared
machine read the ratios, not the seconds; the load average is recorded. JSON to stdout and to
``benchmarks/results/backends.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--shapes", default="96x256x160,96x256x144", help="half volumes (the two halves of a "
                   "300x512x512 scan at 1x0.8x0.8 mm, preprocessed: 96x256x160 and 96x256x144)")
    p.add_argument("--paths", default="torch-fp32,torch-bf16,openvino-fp32,openvino-bf16,openvino-bf16-dynamic,"
                   "openvino-bf16-torchgn")
    p.add_argument("--out", type=Path, default=HERE / "results" / "backends.json")
    args = p.parse_args()
    os.environ.setdefault("KIDNEYSSL_CACHE_DIR", tempfile.mkdtemp(prefix="bench_backends_cache_"))

    import openvino as ov
    import torch

    import kidneyssl  # noqa: F401  first: torch's allocator environment
    from kidneyssl.config import load_preset
    from kidneyssl.inference.device import cpu_model_name
    from kidneyssl.inference.ov_backend import OpenVINONetwork, export_openvino, exported_model
    from kidneyssl.inference.precision import PROBE_SHAPE
    from kidneyssl.models import build_segmentation_model

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_segmentation_model(load_preset("paper").model, reconstruction=False).eval()
    t0 = time.perf_counter()
    xml = exported_model(model)
    export_s = time.perf_counter() - t0
    # the same network exported with PyTorch's GroupNorm (what the export computed before)
    torch_gn_xml = export_openvino(model, Path(tempfile.mkdtemp(prefix="bench_backends_gn_")),
                                   group_norm="torch")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    inputs = {s: torch.randn(1, 1, *s) for s in [*shapes, PROBE_SHAPE]}
    core = ov.Core()

    def torch_call(precision: str):
        def run(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                return model.inference_forward(x)
        return run

    class Dynamic:
        """One model compiled with free spatial dimensions."""

        def __init__(self, precision: str) -> None:
            t = time.perf_counter()
            self.compiled = core.compile_model(core.read_model(str(xml)), "CPU", {
                "INFERENCE_NUM_THREADS": args.threads, "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32"})
            self.compile_s = time.perf_counter() - t
            self.request = self.compiled.create_infer_request()

        def __call__(self, x):
            return self.request.infer({0: x.numpy()})[0]

    def timed(fn, x) -> float:
        t = time.perf_counter()
        fn(x)
        return time.perf_counter() - t

    rows: list[dict] = []
    started, load_start = time.time(), os.getloadavg()
    for rnd in range(args.rounds):
        for path in args.paths.split(","):
            backend, precision = path.split("-")[:2]
            dynamic = path.endswith("dynamic")
            row: dict = {"path": path, "round": rnd, "load_average": os.getloadavg(), "shapes": {}}
            if backend == "torch":
                fn = torch_call(precision)
                for s in [*shapes, PROBE_SHAPE]:
                    first = timed(fn, inputs[s])
                    row["shapes"]["x".join(map(str, s))] = {"first_s": first, "second_s": timed(fn, inputs[s])}
            elif dynamic:
                net = Dynamic(precision)
                row["compile_s"] = net.compile_s
                for s in [*shapes, PROBE_SHAPE]:
                    first = timed(net, inputs[s])
                    row["shapes"]["x".join(map(str, s))] = {"first_s": first, "second_s": timed(net, inputs[s])}
                del net
            else:
                onet = OpenVINONetwork(torch_gn_xml if path.endswith("torchgn") else xml, precision, args.threads)
                for s in [*shapes, PROBE_SHAPE]:
                    t = time.perf_counter()
                    onet._compile((1, 1, *s))
                    compile_s = time.perf_counter() - t
                    first = timed(onet, inputs[s])
                    row["shapes"]["x".join(map(str, s))] = {"compile_s": compile_s, "first_s": first,
                                                          "second_s": timed(onet, inputs[s])}
                onet.release()
            rows.append(row)
            print(path, rnd, {k: round(v["second_s"], 2) for k, v in row["shapes"].items()}, flush=True)

    def op_shares(model_xml: Path, shape: tuple[int, ...]) -> dict:
        """Share of one bf16 inference's time per OpenVINO operation type (PERF_COUNT)."""
        model_ov = core.read_model(str(model_xml))
        model_ov.reshape({0: ov.PartialShape([1, 1, *shape])})
        compiled = core.compile_model(model_ov, "CPU", {"INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True,
                                                        "PERFORMANCE_HINT": "LATENCY",
                                                        "INFERENCE_PRECISION_HINT": "bf16"})
        request = compiled.create_infer_request()
        x = inputs[shape].numpy()
        request.infer({0: x})
        t = time.perf_counter()
        request.infer({0: x})
        total = time.perf_counter() - t
        per_type: dict[str, float] = {}
        for info in request.profiling_info:
            per_type[info.node_type] = per_type.get(info.node_type, 0.0) + info.real_time.total_seconds()
        busy = sum(per_type.values()) or 1.0
        return {"seconds": round(total, 2),
                "share": {k: round(v / busy, 3) for k, v in sorted(per_type.items(), key=lambda kv: -kv[1]) if v}}

    profiles = {"channel_group_norm": op_shares(xml, shapes[0]), "torch_group_norm": op_shares(torch_gn_xml, shapes[0])}

    def best(path: str, shape: str, key: str = "second_s") -> float | None:
        vals = [r["shapes"][shape][key] for r in rows if r["path"] == path and shape in r["shapes"]]
        return min(vals) if vals else None

    summary: dict = {}
    names = ["x".join(map(str, s)) for s in [*shapes, PROBE_SHAPE]]
    for shape in names:
        entry = {path: best(path, shape) for path in args.paths.split(",")}
        ref = entry.get("torch-fp32")
        if ref:
            entry["speed_over_torch_fp32"] = {k: round(ref / v, 2) for k, v in entry.items()
                                              if isinstance(v, float) and v > 0}
        for backend in ("torch", "openvino"):
            f, b = entry.get(f"{backend}-fp32"), entry.get(f"{backend}-bf16")
            if f and b:
                entry[f"{backend}_bf16_speedup"] = round(f / b, 2)
        summary[shape] = entry
    probe = "x".join(map(str, PROBE_SHAPE))
    summary["probe_ranks_like_a_half"] = {
        backend: all((summary[probe].get(f"{backend}_bf16_speedup", 1) >= 1.15) ==
                     (summary[s].get(f"{backend}_bf16_speedup", 1) >= 1.15) for s in names[:-1])
        for backend in ("torch", "openvino")}
    first_calls = {path: {s: best(path, s, "first_s") for s in names[:-1]} for path in args.paths.split(",")}
    result = {"benchmark": "backends", "model": "paper ModelConfig, random weights", "threads": args.threads,
              "cpu": cpu_model_name(), "cpu_count": os.cpu_count(), "openvino": ov.__version__,
              "torch": torch.__version__, "export_s": round(export_s, 2), "load_average_start": load_start,
              "load_average_end": os.getloadavg(), "seconds": round(time.time() - started, 1),
              "summary": summary, "first_call_s": first_calls, "openvino_bf16_op_shares": profiles,
              "rows": rows}
    text = json.dumps(result, indent=2, default=float)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
