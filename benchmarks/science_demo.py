"""The paper's comparison at demo scale, done as a reviewer would want it: several seeds, a
held-out test part, both proxy inputs, paired differences with intervals.

Writes synthetic phantoms (``--cases``, default 32: with the demo preset's fractions, 6 validation,
6 test and 20 training cases, of which pretraining holds 4 out for its own validation), runs
``kidneyssl experiment`` with the ``demo`` preset for ``--seeds`` (default 0 1 2) and both proxy
variants (region, masked) on the CPU, and writes ``benchmarks/results/science_demo.json`` (paired
differences MwS - MwoS with 95 % bootstrap intervals, per-seed means, epochs-to-reach, timings,
load average) and a copy of the report (``benchmarks/results/science_demo_report.md``).

This is a benchmark, not a test: it takes tens of minutes on 2 cores, and its numbers are what
they are (the JSON states the result whichever way it falls). Resumable: re-run the same command
to continue (the experiment folder is ``--work``).

Usage: ``python benchmarks/science_demo.py [--cases 32] [--seeds 0 1 2] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phantom-seed", type=int, default=7, help="dataset seed (not the demo's 0)")
    parser.add_argument("--work", default="/tmp/kidneyssl-science-demo")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.workflows.experiment import run_experiment

    work = Path(args.work)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    write_dataset(work / "data", args.cases, args.phantom_seed, resolution="demo", workers=2)
    cfg = apply_overrides(load_preset("demo"), [
        f"protocol.seeds=[{', '.join(str(s) for s in args.seeds)}]",
        "protocol.proxy_variants=[region, masked]",
        f"synth.cases={args.cases}", f"synth.seed={args.phantom_seed}",
        *args.overrides,
    ])
    result = run_experiment(work / "data", work / "run", cfg, device=args.device)
    wall = time.perf_counter() - t0
    report_dir = Path(result.report).parent
    out = {
        "what": "demo-scale MwS vs MwoS experiment on phantoms: seeds x proxy variants, held-out test part",
        "cases": args.cases, "seeds": args.seeds, "phantom_seed": args.phantom_seed,
        "config_overrides": args.overrides,
        "split": json.loads((work / "run" / "split.json").read_text()),
        "paired_differences": result.differences.get("paired", []),
        "epochs_to_reach": result.differences.get("epochs_to_reach", {}),
        "summary": {k: {m: v[m] for m in ("dice", "hd95_mm")} | {"n_cases": v["n_cases"]}
                    for k, v in result.summary.items()},
        "final_val_dice_mean_over_seeds": result.final_val_dice,
        "timings_s": result.timings, "wall_s": round(wall, 1),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "science_demo.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    text = (report_dir / "report.md").read_text()
    for name in ("fig5_dice_curves.png", "proxy_accuracy.png", "fig4_overlays.png"):
        if (report_dir / name).is_file():
            shutil.copy(report_dir / name, RESULTS / f"science_demo_{name}")
            text = text.replace(f"]({name})", f"](science_demo_{name})")
    (RESULTS / "science_demo_report.md").write_text(text)
    for d in out["paired_differences"]:
        print(f"{d['model']} - MwoS  {d['part']:4s} {d['metric']:8s} {d['mean']:+.4f} "
              f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]  ({d['n_cases']} cases x {d['n_seeds']} seeds)")
    print(f"wall {wall / 60:.1f} min; report {result.report}")


if __name__ == "__main__":
    main()
