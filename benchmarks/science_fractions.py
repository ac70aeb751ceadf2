"""How many annotated cases is pretraining worth, at demo scale (issue 22): label-fraction curves
on phantoms with intervals.

Writes ``--cases`` synthetic phantoms (default 24: with the fractions below, 10 test, 4
validation and 10 training cases), runs ``kidneyssl experiment`` with the ``demo`` preset for
``--seeds`` (default 0 1 2), label budgets of 2, 4 and 8 annotated cases plus all training cases,
scratch (MwoS) against the side proxy (``side-region``) and, when they are registered, the generic
methods (``mae``, ``genesis``), on the CPU. Writes ``benchmarks/results/<name>.json`` (test Dice
per model and budget with the seeds' means, each method - scratch per budget with its interval,
the annotated cases saved with their bootstrap intervals, pretraining device-seconds, wall time,
load average) and copies of both reports (``<name>_report.md``, ``<name>_label_fractions.md``
and the figure).

Ten test cases are the fewest for which the report gives bootstrap intervals (below, the
experiment's small-sample rules print the numbers without intervals or conclusions).

This is a benchmark, not a test: scratch against side-region takes about an hour on 2 idle cores
(each generic method adds about half an hour: ``--methods side-region`` leaves them out), and its
numbers are what they are (the JSON states them whichever way they fall). Resumable: re-run the same command to
continue (the experiment folder is ``--work``/run).

Usage: ``python benchmarks/science_fractions.py [--cases 24] [--seeds 0 1 2] [--counts 2 4 8] [--work DIR]``
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
    parser.add_argument("--cases", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 4, 8], help="label budgets (cases)")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="pretraining methods (default: side-region, and mae and genesis when registered)")
    parser.add_argument("--test-cases", type=int, default=10, help="held-out test cases")
    parser.add_argument("--val-cases", type=int, default=4, help="validation cases")
    parser.add_argument("--phantom-seed", type=int, default=11, help="dataset seed")
    parser.add_argument("--work", default="/tmp/kidneyssl-science-fractions")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--name", default="science_fractions", help="results file stem in benchmarks/results")
    args = parser.parse_args()

    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.training.tasks.registry import PRETRAINING_METHODS
    from kidneyssl.workflows.experiment import run_experiment

    methods = args.methods or ["side-region"] + [m for m in ("mae", "genesis") if m in PRETRAINING_METHODS]
    work = Path(args.work)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    write_dataset(work / "data", args.cases, args.phantom_seed, resolution="demo", workers=2)
    # fractions that round (make_split: round(n x fraction)) to the asked numbers of cases
    test_fraction = args.test_cases / args.cases
    val_fraction = args.val_cases / args.cases
    cfg = apply_overrides(load_preset("demo"), [
        f"protocol.seeds=[{', '.join(str(s) for s in args.seeds)}]",
        f"protocol.methods=[{', '.join(methods)}]",
        f"protocol.label_counts=[{', '.join(str(n) for n in args.counts)}]",
        f"protocol.test_fraction={test_fraction}", f"train.val_fraction={val_fraction}",
        f"synth.cases={args.cases}", f"synth.seed={args.phantom_seed}",
        *args.overrides,
    ])
    result = run_experiment(work / "data", work / "run", cfg, device=args.device)
    wall = time.perf_counter() - t0
    assert result is not None
    report_dir = Path(result.report).parent
    fractions = result.label_fractions
    state = json.loads((work / "run" / "experiment.json").read_text())
    out = {
        "what": "label-fraction curves at demo scale on phantoms: scratch vs pretraining methods, nested budgets "
                "per seed, held-out test part",
        "cases": args.cases, "seeds": args.seeds, "label_counts": args.counts, "methods": methods,
        "phantom_seed": args.phantom_seed, "config_overrides": args.overrides,
        "split": json.loads((work / "run" / "split.json").read_text()),
        "test_dice_by_budget": {m: {str(n): {"mean": v["mean"], "seed_means": v["seed_means"]} for n, v in by_n.items()}
                                for m, by_n in fractions.get("curves", {}).items()},
        "method_minus_scratch": [{k: d[k] for k in ("base_model", "annotated_cases", "mean", "ci_low", "ci_high",
                                                    "interval", "p_value", "p_holm", "n_cases", "n_seeds",
                                                    "verdict", "conclusion")}
                                 for d in fractions.get("differences", [])],
        "cases_saved": fractions.get("cases_saved", []),
        "pretraining_cost": fractions.get("cost", []),
        "compute": state.get("compute", {}),
        "wall_s": round(wall, 1),
        "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    for source, target in (("report.md", "report.md"), ("label_fractions.md", "label_fractions.md")):
        text = (report_dir / source).read_text()
        for fig in ("fig5_dice_curves.png", "proxy_accuracy.png", "fig4_overlays.png", "label_fractions.png"):
            if (report_dir / fig).is_file():
                shutil.copy(report_dir / fig, RESULTS / f"{args.name}_{fig}")
                text = text.replace(f"]({fig})", f"]({args.name}_{fig})")
        (RESULTS / f"{args.name}_{target}").write_text(text)
    for d in out["method_minus_scratch"]:
        print(f"{d['base_model']} - MwoS with {d['annotated_cases']} cases: test Dice {d['mean']:+.4f} "
              f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] ({d['interval']}, {d['n_cases']} cases x {d['n_seeds']} "
              f"seeds): {d['conclusion']}")
    for e in out["cases_saved"]:
        print(f"{e['model']} with {e['annotated_cases']} cases: scratch needs {e['scratch_cases']} ({e['status']}); "
              f"saved {e['saved']} [{e['ci_low']}, {e['ci_high']}]")
    print(f"wall {wall / 60:.1f} min; report {result.report}")


if __name__ == "__main__":
    main()
