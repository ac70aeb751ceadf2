"""The paper's comparison on a strong backbone: the side proxy (MwS) vs scratch (MwoS) with nnU-Net's
ResEnc U-Net instead of the paper's dense U-Net, on phantoms, several seeds, paired differences
with intervals (the MAE paper's pitfall: a gain on a small network may vanish on a state-of-the-art
one).

Steps: ``--cases`` phantoms in nnU-Net raw layout; nnU-Net plans them with its ResEnc planner
(``nnUNetv2_plan_and_preprocess -pl nnUNetPlannerResEncM --no_pp``: the architecture only; nnU-Net
preprocesses nothing here); the planned ``ResidualEncoderUNet`` (same stages, strides, kernels and
blocks per stage) is narrowed by ``--width-divisor`` for the CPU (1 = nnU-Net's ResEnc M widths,
32..320) and written to ``WORK/plans_resenc.json``; then ``kidneyssl experiment --architecture
resenc-unet --plans WORK/plans_resenc.json`` runs on the same phantoms with the ``demo`` preset
(our preprocessing, padded to the network's size multiple), methods ``side-region`` and scratch,
for ``--seeds``. Writes ``benchmarks/results/science_nnunet.json`` (paired differences MwS - MwoS
with their intervals, per-model summaries, the network, timings, load) and the report
(``science_nnunet_report.md``).

Scale (defaults): 32 demo-resolution phantoms (6 validation, 6 test, 20 training cases), the demo
preset's epochs, ResEnc M narrowed 4x (8..80 features), 3 seeds, CPU. A benchmark, not a test;
resumable (re-run the same command). Needs the ``nnunet`` extra.

Usage: ``python benchmarks/science_nnunet.py [--cases 32] [--seeds 0 1 2] [--width-divisor 4] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DATASET = "Dataset001_Phantom"


def plan_resenc(work: Path, planner: str, divisor: int) -> Path:
    """nnU-Net's ResEnc plans of the phantoms (planning only), narrowed by ``divisor``."""
    env = dict(os.environ)
    for name in ("raw", "preprocessed", "results"):
        (work / f"nnUNet_{name}").mkdir(parents=True, exist_ok=True)
        env[f"nnUNet_{name}"] = str(work / f"nnUNet_{name}")
    folder = work / "nnUNet_preprocessed" / DATASET
    planned = sorted(folder.glob("*ResEnc*Plans*.json")) if folder.is_dir() else []
    if not planned:
        code = textwrap.dedent(f"""
            import sys
            from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry
            sys.argv = ["nnUNetv2_plan_and_preprocess", "-d", "1", "-c", "3d_fullres", "-pl", "{planner}",
                        "--no_pp", "-npfp", "1"]
            plan_and_preprocess_entry()
        """)
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        planned = sorted(folder.glob("*ResEnc*Plans*.json"))
    plans = json.loads(planned[0].read_text())
    config = plans["configurations"]["3d_fullres"]
    kwargs = config["architecture"]["arch_kwargs"]
    kwargs["features_per_stage"] = [max(4, int(f) // divisor) for f in kwargs["features_per_stage"]]
    plans["plans_name"] = f"{plans['plans_name']}_div{divisor}"
    out = work / "plans_resenc.json"
    out.write_text(json.dumps(plans, indent=1))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phantom-seed", type=int, default=7)
    parser.add_argument("--width-divisor", type=int, default=4, help="narrow nnU-Net's widths (1: as planned)")
    parser.add_argument("--planner", default="nnUNetPlannerResEncM")
    parser.add_argument("--work", default="/tmp/kidneyssl-science-nnunet")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="science_nnunet")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/results (a trial run)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")  # the experiment's progress lines

    from science_demo import write_results  # this folder is on sys.path when run as a script

    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.models.nnunet import NNUNET_VERSION, nnunet_model_settings
    from kidneyssl.models.registry import build_network, network_spec
    from kidneyssl.phantoms.formats import write_dataset_as
    from kidneyssl.workflows.experiment import run_experiment

    work = Path(args.work)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    raw = work / "nnUNet_raw" / DATASET
    if not (raw / "dataset.json").is_file():
        write_dataset_as(raw, "nnunet", args.cases, args.phantom_seed, resolution="demo", force=True)
    plans = plan_resenc(work, args.planner, args.width_divisor)
    settings = nnunet_model_settings(plans, "3d_fullres", "resenc-unet")
    cfg = apply_overrides(load_preset("demo"), [
        f"protocol.seeds=[{', '.join(str(s) for s in args.seeds)}]", "protocol.methods=[side-region]",
        f"synth.cases={args.cases}", f"synth.seed={args.phantom_seed}",
        *(f"model.{k}={v}" for k, v in settings.items()), *args.overrides])
    spec = network_spec(cfg.model)
    network = build_network(spec)
    parameters = sum(p.numel() for p in network.parameters())
    result = run_experiment(raw, work / "run", cfg, device=args.device)
    wall = time.perf_counter() - t0
    print(f"wall {wall / 60:.1f} min; run {work / 'run'}")
    if args.no_results or result is None:
        return
    report_dir = Path(result.report).parent
    out = {
        "what": "side proxy (MwS, region input) vs scratch (MwoS) with nnU-Net's ResEnc U-Net on phantoms: seeds, "
                "held-out test part, paired differences with intervals",
        "scale": {"cases": args.cases, "resolution": "demo", "preset": "demo", "width_divisor": args.width_divisor,
                  "planner": args.planner, "seeds": args.seeds, "device": args.device},
        "network": {"class": spec.args["network_class_name"], "arch_kwargs": spec.args["arch_kwargs"],
                    "parameters": parameters, "size_multiple": int(network.size_multiple),
                    "nnunet_version": NNUNET_VERSION},
        "phantom_seed": args.phantom_seed, "config_overrides": args.overrides,
        "split": json.loads((work / "run" / "split.json").read_text()),
        "paired_differences": result.differences.get("paired", []),
        "verdict_rule": result.differences.get("rule"),
        "epochs_to_reach": result.differences.get("epochs_to_reach", {}),
        "summary": {k: {m: v[m] for m in ("dice", "hd95_mm")} | {"n_cases": v["n_cases"]}
                    for k, v in result.summary.items()},
        "final_val_dice_mean_over_seeds": result.final_val_dice,
        "timings_s": result.timings, "wall_s": round(wall, 1),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    write_results(out, report_dir, args.name)  # the same files and printout as science_demo


if __name__ == "__main__":
    main()
