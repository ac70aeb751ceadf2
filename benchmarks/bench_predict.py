"""End-to-end prediction of one KiTS-size case: time per stage and peak memory, and (``--ref``)
the same ``kidneyssl predict`` with no flags for a reference git revision, interleaved.

The scan is a synthetic kidney phantom (``kidneyssl.phantoms``) rendered on a 300 x 512 x 512
grid at 1 x 0.8 x 0.8 mm (KiTS19 orientation, int16, .nii.gz). The network is ``--ckpt`` (a
trained paper-network checkpoint: realistic masks, so realistic post-processing and writing) or,
without it, the paper's ModelConfig with random weights (inference time does not depend on the
weights, but the noisy masks make post-processing and writing slower than real ones). Every
variant is ``kidneyssl predict`` itself in a fresh process (its process settings included), timed
from reading the scan to its mask written (``predict_summary.json``).

    python benchmarks/bench_predict.py [--ckpt RUN/best.pt]               # variants of this tree
    python benchmarks/bench_predict.py --variants auto,torch-fp32,openvino-bf16
    python benchmarks/bench_predict.py --ref 94ae64e [--rounds 2] [--ckpt RUN/best.pt]
    python benchmarks/bench_predict.py --ref 94ae64e --candidate-flags "--precision bf16"
    python benchmarks/bench_predict.py --measure-factor                    # activation bytes/voxel
    python benchmarks/bench_predict.py --isa avx2 --variants auto         # an AVX2-only CPU, approximately

``--isa avx2`` limits PyTorch (``ATEN_CPU_CAPABILITY=avx2``) and oneDNN, OpenVINO's convolutions
included (``ONEDNN_MAX_CPU_ISA=AVX2``), to AVX2 kernels, and runs ``auto`` in float32, which is what
``auto`` picks on a CPU without native bf16 (the flags this CPU reports would make it probe bf16,
which oneDNN then refuses). An approximation of an AVX2-only CPU: OpenVINO's own reductions still
use AVX-512, and clocks and caches stay this machine's. Results go to ``predict_avx2.json``.

``--ref REV`` checks REV out into a temporary ``git worktree`` and runs ``kidneyssl predict
--threads N`` (no other flag) of the reference and of this tree alternately, each in a fresh
process: wall time, read-to-mask-written time (``predict_summary.json``), peak RSS. This tree's
first run uses an empty cache folder (it exports to OpenVINO and probes the precision: "cold");
the later runs reuse it ("warm"). The masks are compared with the reference tree's float32 masks
(``--precision fp32``, the fp32 PyTorch halves masks): Dice >= 0.995 is the target.

JSON to stdout and to ``benchmarks/results/predict.json`` (``predict_ref.json`` with ``--ref``,
``predict_factor.json`` with ``--measure-factor``). Targets (issue 24, no flags, 2 threads, an
AVX-512 CPU): < 10 s read to mask written, peak < 3 GB, >= 2.5x faster than 94ae64e.
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
SHAPE = (300, 512, 512)  # canonical (z, y, x)
SPACING = (1.0, 0.8, 0.8)
TARGET_S = 10.0
TARGET_AVX2_S = 15.0
TARGET_MB = 3072.0
TARGET_SPEEDUP = 2.5
TARGET_DICE = 0.995

VARIANTS = {  # name -> child options
    "auto": [],  # what `predict` with no flags does: backend, precision and budget auto
    "torch-fp32": ["--backend", "torch", "--precision", "fp32"],
    "torch-bf16": ["--backend", "torch", "--precision", "bf16"],
    "openvino-fp32": ["--backend", "openvino", "--precision", "fp32"],
    "openvino-bf16": ["--backend", "openvino", "--precision", "bf16"],
    "sliding": ["--strategy", "sliding"],
}


def cpu_description() -> dict:
    """CPU model, the instruction-set flags that matter for inference speed, and the core count."""
    flags = ""
    name = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not name:
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = line.split(":", 1)[1]
    except OSError:
        pass
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"model": name, "flags": [f for f in wanted if f in flags.split()], "cpu_count": os.cpu_count()}


def make_case(folder: Path) -> tuple[Path, Path]:
    """Write the phantom scan (and its label) and a random-weight paper checkpoint into ``folder``."""
    import math

    import numpy as np
    import torch
    from scipy import ndimage

    from kidneyssl.config import config_to_dict, load_preset
    from kidneyssl.io.checkpoint import save_checkpoint
    from kidneyssl.io.geometry import Geometry
    from kidneyssl.io.volumes import write_volume
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.phantoms.anatomy import sample_anatomy
    from kidneyssl.phantoms.generate import _render_grid, kits_affine, label_on_grid
    from kidneyssl.phantoms.render import render_hu
    from kidneyssl.phantoms.shapes import Grid

    # generate_case's steps on a fixed KiTS-size grid (its own grid is drawn at random)
    anat = sample_anatomy(24)
    top, bottom = anat.u_extent
    spare = SHAPE[0] * SPACING[0] - (bottom - top)
    fov = SHAPE[1] * SPACING[1]
    dv, dw = anat.body_shift_mm
    grid = Grid(shape=SHAPE, spacing=SPACING, origin=(top - 0.5 * max(spare, 0.0), -dv - fov / 2 + SPACING[1] / 2,
                                                      -dw - fov / 2 + SPACING[2] / 2))
    coarse = _render_grid(grid)
    hu, _ = render_hu(anat, coarse)
    hu = ndimage.gaussian_filter(hu, sigma=0.5)
    scale = np.asarray(grid.spacing) / np.asarray(coarse.spacing)
    offset = (np.asarray(grid.origin) - np.asarray(coarse.origin)) / np.asarray(coarse.spacing)
    hu = ndimage.affine_transform(hu, scale, offset=offset, output_shape=grid.shape, order=1, mode="nearest")
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal(grid.shape, dtype=np.float32), sigma=(0.0, 0.6, 0.6))
    hu += noise * (anat.hu["noise_sd"] / (float(noise.std()) + 1e-6))
    img = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
    geometry = Geometry(kits_affine(SPACING), SHAPE)
    scan = folder / "case_00000" / "imaging.nii.gz"
    scan.parent.mkdir(parents=True, exist_ok=True)
    write_volume(img, geometry, scan)
    write_volume(label_on_grid(anat, grid), geometry, folder / "case_00000" / "segmentation.nii.gz")
    assert math.prod(img.shape) == math.prod(SHAPE)
    cfg = load_preset("paper")
    torch.manual_seed(0)
    ckpt = folder / "paper_random.pt"
    save_checkpoint(ckpt, kind="segmentation", config=config_to_dict(cfg),
                    model_state=build_segmentation_model(cfg.model).state_dict())
    return scan, ckpt


FACTOR_CODE = r"""
import kidneyssl, resource, sys, time, torch
torch.set_num_threads(%d)
from kidneyssl.config import load_preset
from kidneyssl.models import build_segmentation_model
shape, kind = tuple(int(v) for v in sys.argv[1].split("x")), sys.argv[2]
m = build_segmentation_model(load_preset("paper").model, reconstruction=False).eval()
x = torch.randn(1, 1, *shape)
if kind.startswith("openvino"):
    from kidneyssl.inference.engine import InferenceModel
    net = InferenceModel(m, backend="openvino", precision=kind.split("-")[1])
    net.precision
    run = lambda: net.logits(x)
else:
    bf16 = kind.endswith("bf16")
    def run():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return m.inference_forward(x)
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter(); run(); first = time.perf_counter() - t
peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) * 1024 / x.numel()
t = time.perf_counter(); run(); second = time.perf_counter() - t
print(peak, first, second)
"""


def measure_factor(args: argparse.Namespace) -> dict:
    """Peak RSS increase per input voxel of one forward pass (fresh process per size and path)."""
    from kidneyssl.inference.device import cpu_has_native_bf16
    from kidneyssl.inference.ov_backend import openvino_version

    # bfloat16 without native support runs PyTorch's reference convolution (minutes per call)
    native_bf16 = cpu_has_native_bf16()
    kinds = ["torch-fp32"] + (["torch-bf16"] if native_bf16 else [])
    if openvino_version():
        kinds += ["openvino-fp32", "openvino-bf16"]
    env = dict(os.environ, KIDNEYSSL_CACHE_DIR=tempfile.mkdtemp(prefix="bench_factor_cache_"))
    rows = []
    for shape in ((64, 128, 128), (96, 256, 160)):
        for kind in kinds:
            out = subprocess.run([sys.executable, "-c", FACTOR_CODE % args.threads, "x".join(map(str, shape)), kind],
                                 capture_output=True, text=True, env=env)
            if out.returncode:
                rows.append({"input": "x".join(map(str, shape)), "path": kind, "error": out.stderr[-500:]})
                continue
            bpv, first, second = (float(v) for v in out.stdout.split()[-3:])
            rows.append({"input": "x".join(map(str, shape)), "path": kind, "bytes_per_voxel": round(bpv, 1),
                         "first_s": round(first, 2), "second_s": round(second, 2)})
            print(rows[-1], file=sys.stderr, flush=True)
    shutil.rmtree(env["KIDNEYSSL_CACHE_DIR"], ignore_errors=True)
    return {"benchmark": "predict_activation_factor", "threads": args.threads, "rows": rows,
            "native_bf16": native_bf16, "openvino": openvino_version(), "cpu": cpu_description(),
            "load_average": os.getloadavg()}


# --- this tree vs a reference revision, the CLI with no flags ------------------------------------

LAUNCH = r"""
import resource, runpy, sys
sys.argv = ["kidneyssl"] + sys.argv[1:]
code = 0
try:
    runpy.run_module("kidneyssl.cli.main", run_name="__main__")
except SystemExit as stop:
    code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
print("PEAK_RSS_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
sys.exit(code)
"""


def _cli_predict(src: Path, scan_dir: Path, ckpt: Path, out: Path, threads: int, cache: Path,
                 extra: list[str], prelude: str = "", env_extra: dict[str, str] | None = None) -> dict:
    """``kidneyssl predict`` of tree ``src`` in a fresh process (``prelude``: Python run first in
    it; ``env_extra``: added to its environment); wall time, peak RSS and the stages of
    ``predict_summary.json``."""
    if out.exists():
        shutil.rmtree(out)
    env = dict(os.environ, PYTHONPATH=str(src), KIDNEYSSL_NO_PROGRESS="1", KIDNEYSSL_CACHE_DIR=str(cache),
               **(env_extra or {}))
    cmd = [sys.executable, "-c", prelude + LAUNCH, "predict", "--model", str(ckpt), "--input", str(scan_dir),
           "--out", str(out), "--threads", str(threads), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    row: dict = {"wall_s": round(wall, 2), "returncode": proc.returncode, "load_average": os.getloadavg()}
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_RSS_KB")]
    if peak:
        row["peak_rss_mb"] = round(int(peak[-1].split()[1]) / 1024.0, 1)
    summary_path = out / "predict_summary.json"
    if proc.returncode or not summary_path.is_file():
        row["error"] = proc.stderr[-1500:]
        return row
    summary = json.loads(summary_path.read_text())
    timings = next(iter(summary["timings_s"].values()))
    row["read_to_written_s"] = round(timings["total"], 2)
    row["stages_s"] = {k: round(v, 3) for k, v in timings.items()}
    row["inference"] = summary.get("inference") or summary.get("inference_plan")
    row["log_head"] = [line for line in proc.stderr.splitlines() if "predict" in line][:3]
    return row


def _dice(a_path: Path, b_path: Path) -> float:
    import nibabel as nib
    import numpy as np

    a = np.asarray(nib.load(str(a_path)).dataobj) > 0
    b = np.asarray(nib.load(str(b_path)).dataobj) > 0
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


def compare_with_ref(args: argparse.Namespace, scan: Path, ckpt: Path, work: Path) -> dict:
    rev = subprocess.run(["git", "rev-parse", args.ref], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    started, load_start = time.time(), os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="bench_predict_ref_"))
    ref_tree = tmp / "ref"
    subprocess.run(["git", "worktree", "add", "--detach", str(ref_tree), rev], cwd=ROOT, check=True,
                   capture_output=True)
    runs: list[dict] = []
    try:
        trees = {"reference": ref_tree / "src", "candidate": ROOT / "src"}
        if not args.ckpt:  # written by the reference, which cannot read newer config keys; both read it
            ckpt = work / "paper_random_reference.pt"
            code = ("import torch; from kidneyssl.config import load_preset, config_to_dict; "
                    "from kidneyssl.io.checkpoint import save_checkpoint; "
                    "from kidneyssl.models import build_segmentation_model; cfg = load_preset('paper'); "
                    f"torch.manual_seed(0); save_checkpoint({str(ckpt)!r}, kind='segmentation', "
                    "config=config_to_dict(cfg), model_state=build_segmentation_model(cfg.model).state_dict())")
            subprocess.run([sys.executable, "-c", code], check=True,
                           env=dict(os.environ, PYTHONPATH=str(trees["reference"])))
        cache = tmp / "cache"  # this tree's export and precision probe, filled by its first run
        scan_dir = scan.parent.parent
        for rnd in range(args.rounds):
            for name, src in trees.items():
                extra = args.candidate_flags.split() if name == "candidate" else []
                row = _cli_predict(src, scan_dir, ckpt, work / f"out_{name}", args.threads, cache, extra)
                row.update(tree=name, round=rnd, cache="cold" if name == "candidate" and rnd == 0 else "warm")
                runs.append(row)
                print(f"{name} round {rnd}: {row.get('read_to_written_s', row.get('error'))} s "
                      f"(wall {row['wall_s']} s, {row.get('peak_rss_mb')} MB)", file=sys.stderr, flush=True)
        # the agreement reference: the reference tree's float32 PyTorch halves masks
        fp32 = _cli_predict(trees["reference"], scan_dir, ckpt, work / "out_reference_fp32", args.threads, cache,
                            ["--precision", "fp32"])
        fp32.update(tree="reference", round=-1, flags="--precision fp32")
        runs.append(fp32)
        name = "prediction_00000.nii.gz"
        dice = {
            "candidate_vs_reference_fp32": _dice(work / "out_candidate" / name, work / "out_reference_fp32" / name),
            "reference_default_vs_reference_fp32": _dice(work / "out_reference" / name,
                                                         work / "out_reference_fp32" / name),
        }
        label = scan.parent / "segmentation.nii.gz"
        if label.is_file():
            dice["candidate_vs_phantom_label"] = _dice(work / "out_candidate" / name, label)
            dice["reference_fp32_vs_phantom_label"] = _dice(work / "out_reference_fp32" / name, label)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(ref_tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)

    def best(tree: str, key: str, warm_only: bool = True) -> float | None:
        vals = [r[key] for r in runs if r["tree"] == tree and r["round"] >= 0 and key in r
                and (not warm_only or r.get("cache") == "warm")]
        return min(vals) if vals else None

    summary = {
        "reference_read_to_written_s": best("reference", "read_to_written_s"),
        "candidate_read_to_written_s": best("candidate", "read_to_written_s"),
        "candidate_cold_read_to_written_s": next((r.get("read_to_written_s") for r in runs
                                                  if r.get("cache") == "cold"), None),
        "reference_wall_s": best("reference", "wall_s"), "candidate_wall_s": best("candidate", "wall_s"),
        "candidate_cold_wall_s": next((r.get("wall_s") for r in runs if r.get("cache") == "cold"), None),
        "reference_peak_rss_mb": best("reference", "peak_rss_mb", False),
        "candidate_peak_rss_mb": max((r["peak_rss_mb"] for r in runs if r["tree"] == "candidate"
                                      and "peak_rss_mb" in r), default=None),
        "dice": dice,
    }
    ref_t, cand_t = summary["reference_read_to_written_s"], summary["candidate_read_to_written_s"]
    if ref_t and cand_t:
        summary["speedup_read_to_written"] = round(ref_t / cand_t, 2)
        summary["speedup_wall"] = round(summary["reference_wall_s"] / summary["candidate_wall_s"], 2)
        summary["meets"] = {
            "under_10_s": cand_t < TARGET_S,
            "peak_under_3_gb": (summary["candidate_peak_rss_mb"] or 1e9) < TARGET_MB,
            "speedup_2_5x": ref_t / cand_t >= TARGET_SPEEDUP,
            "dice_0_995": dice["candidate_vs_reference_fp32"] >= TARGET_DICE,
        }
    return {"benchmark": "predict_vs_reference", "reference_rev": rev, "threads": args.threads,
            "candidate_flags": args.candidate_flags,
            "case": {"shape": SHAPE, "spacing_mm": SPACING, "format": "nii.gz int16, KiTS19 orientation (I, P, L)",
                     "content": "kidney phantom (kidneyssl.phantoms, seed 24)"},
            "checkpoint": str(ckpt), "cpu": cpu_description(), "load_average_start": load_start,
            "load_average_end": os.getloadavg(), "seconds": round(time.time() - started, 1),
            "summary": summary, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="auto", help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--ckpt", default=None, help="a trained segmentation checkpoint (default: random weights)")
    parser.add_argument("--ref", default=None, help="compare `kidneyssl predict` with this git revision")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the --ref comparison")
    parser.add_argument("--candidate-flags", default="", help="--ref: flags for this tree's predict "
                        "(default none), e.g. '--precision bf16'")
    parser.add_argument("--measure-factor", action="store_true")
    parser.add_argument("--workdir", default=None, help="reuse a folder holding the scan/checkpoint")
    parser.add_argument("--isa", choices=("native", "avx2"), default="native",
                        help="avx2: PyTorch and oneDNN limited to AVX2 kernels (see the docstring)")
    parser.add_argument("--make-case", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_case:
        make_case(Path(args.make_case))
        return
    if args.measure_factor:
        result = measure_factor(args)
        name = "predict_factor.json"
    else:
        work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench_predict_"))
        scan, random_ckpt = work / "case_00000" / "imaging.nii.gz", work / "paper_random.pt"
        if not (scan.is_file() and random_ckpt.is_file()):
            # in a subprocess: a child started by fork+exec can report its parent's peak RSS as
            # its own ru_maxrss, so the parent must stay small
            t0 = time.perf_counter()
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
            subprocess.run([sys.executable, __file__, "--make-case", str(work)], check=True, env=env)
            print(f"wrote the phantom case in {time.perf_counter() - t0:.1f} s: {scan}", file=sys.stderr)
        ckpt = Path(args.ckpt) if args.ckpt else random_ckpt
        if args.ref:
            result = compare_with_ref(args, scan, ckpt, work)
            name = "predict_ref.json" if not args.candidate_flags else \
                f"predict_ref_{'_'.join(f.strip('-') for f in args.candidate_flags.split())}.json"
        else:
            runs = {}
            cache = Path(tempfile.mkdtemp(prefix="bench_predict_cache_"))
            isa_env = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"} if args.isa == "avx2" else {}
            for variant in args.variants.split(","):
                options = VARIANTS[variant]
                if args.isa == "avx2" and variant == "auto":
                    options = ["--precision", "fp32"]  # auto on a CPU without native bf16
                # `kidneyssl predict` itself, as a user runs it (its process settings included)
                row = _cli_predict(ROOT / "src", scan.parent.parent, ckpt, work / f"out_{variant}", args.threads,
                                   cache, options, env_extra=isa_env)
                if "error" in row:
                    runs[variant] = row
                    continue
                target_s = TARGET_S if args.isa == "native" else TARGET_AVX2_S
                row["meets_target"] = row["read_to_written_s"] < target_s and row["peak_rss_mb"] < TARGET_MB
                runs[variant] = row
                print(f"{variant}: {row['read_to_written_s']} s, {row['peak_rss_mb']} MB", file=sys.stderr)
            shutil.rmtree(cache, ignore_errors=True)
            result = {"benchmark": "predict_end_to_end", "case": {"shape": SHAPE, "spacing_mm": SPACING,
                      "format": "nii.gz int16, KiTS19 orientation (I, P, L)"}, "checkpoint": str(ckpt),
                      "weights": "trained" if args.ckpt else "random", "threads": args.threads,
                      "target": {"seconds": TARGET_S if args.isa == "native" else TARGET_AVX2_S,
                                 "peak_rss_mb": TARGET_MB}, "cpu": cpu_description(), "isa": args.isa,
                      "isa_env": isa_env, "load_average": os.getloadavg(), "runs": runs}
            name = "predict.json" if args.isa == "native" else "predict_avx2.json"
    text = json.dumps(result, indent=2)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / name).write_text(text + "\n")


if __name__ == "__main__":
    main()
