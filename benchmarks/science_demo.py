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

Scans without masks (issue: does pretraining on unannotated scans pay?): ``--unlabeled 40`` also
writes 40 phantoms of another seed as bare scans (no segmentation anywhere) and runs the experiment
with them, which adds MwS+U (pretrained on the training cases plus those scans as each seed's MwoS
locates them); ``--name science_unlabeled`` keeps its results apart, e.g.::

    OMP_NUM_THREADS=1 python benchmarks/science_demo.py --cases 12 --unlabeled 40 --variants region \
        --set protocol.test_fraction=0.25 --set train.epochs=6 --seeds 0 --work U0 --no-results &  # 1, 2
    python benchmarks/science_demo.py --name science_unlabeled --combine U0 U1 U2

On 2 cores the seeds can also run as separate processes (one thread each, the same phantoms and
split) and be combined afterwards::

    OMP_NUM_THREADS=1 python benchmarks/science_demo.py --seeds 0 --work W0 --no-results &   # also 1, 2
    python benchmarks/science_demo.py --combine W0 W1 W2

Generic self-supervision beside the paper's proxy (does the left/right proxy beat MAE and Models
Genesis?): ``--methods side-region mae genesis`` pretrains each method (the demo preset's
``methods`` settings) and fine-tunes one model per method beside scratch; the JSON adds each
method's pretraining budget (optimiser steps, crops or pairs seen, wall seconds). On a phantom
seed no earlier run used, with a test part of 10 cases (40 cases, test fraction 0.25)::

    for s in 0 1 2; do OMP_NUM_THREADS=1 python benchmarks/science_demo.py --cases 40 --phantom-seed 31 \
        --methods side-region mae genesis --set protocol.test_fraction=0.25 --seeds $s --work M$s \
        --no-results & done; wait
    python benchmarks/science_demo.py --name science_methods --phantom-seed 31 --combine M0 M1 M2
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
    parser.add_argument("--variants", nargs="+", default=["region", "masked"], help="proxy variants")
    parser.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                        help="pretraining methods beside scratch (side-region, side-masked, mae, genesis); "
                             "default: side-<variant> for each of --variants")
    parser.add_argument("--unlabeled", type=int, default=0, metavar="N",
                        help="also N unannotated phantoms (bare scans): adds MwS+U")
    parser.add_argument("--name", default="science_demo", help="results file stem in benchmarks/results")
    parser.add_argument("--no-results", action="store_true", help="do not write benchmarks/results (a part run)")
    parser.add_argument("--combine", nargs="+", default=None, metavar="WORK",
                        help="combine finished per-seed runs (same data and split) into one report")
    args = parser.parse_args()
    if args.combine:
        combine([Path(w) for w in args.combine], args.name, args.phantom_seed)
        return

    from kidneyssl.config import apply_overrides, load_preset
    from kidneyssl.phantoms import write_dataset
    from kidneyssl.workflows.experiment import experiment_methods, run_experiment

    work = Path(args.work)
    load_start = os.getloadavg()
    t0 = time.perf_counter()
    write_dataset(work / "data", args.cases, args.phantom_seed, resolution="demo", workers=2)
    unlabeled = _bare_scans(work, args.unlabeled, args.phantom_seed + 1000) if args.unlabeled else None
    cfg = apply_overrides(load_preset("demo"), [
        f"protocol.seeds=[{', '.join(str(s) for s in args.seeds)}]",
        f"protocol.proxy_variants=[{', '.join(args.variants)}]",
        *([f"protocol.methods=[{', '.join(args.methods)}]"] if args.methods else []),
        f"synth.cases={args.cases}", f"synth.seed={args.phantom_seed}",
        *args.overrides,
    ])
    result = run_experiment(work / "data", work / "run", cfg, device=args.device, unlabeled=unlabeled)
    wall = time.perf_counter() - t0
    if args.no_results:
        print(f"wall {wall / 60:.1f} min; run {work / 'run'}")
        return
    report_dir = Path(result.report).parent
    out = {
        "what": "demo-scale experiment on phantoms: pretraining methods vs scratch, seeds, held-out test part",
        "cases": args.cases, "unlabeled_scans": args.unlabeled, "seeds": args.seeds,
        "methods": [m.name for m in experiment_methods(cfg)],
        "pretraining_budget": _budgets([(work / "run", int(s)) for s in args.seeds], cfg, result.timings),
        "phantom_seed": args.phantom_seed,
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
    write_results(out, report_dir, args.name)
    print(f"wall {wall / 60:.1f} min; report {result.report}")


def _bare_scans(work: Path, n: int, seed: int) -> Path:
    """``n`` phantoms of another seed as bare scans: only ``scans/scan_XXX.nii.gz``, no mask."""
    from kidneyssl.phantoms import write_dataset

    source, scans = work / "unlabeled_source", work / "scans"
    if not scans.is_dir() or len(list(scans.glob("*.nii.gz"))) != n:
        write_dataset(source, n, seed, resolution="demo", workers=2)
        scans.mkdir(parents=True, exist_ok=True)
        for i, case in enumerate(sorted(source.glob("case_*"))):
            shutil.copy(case / "imaging.nii.gz", scans / f"scan_{i:03d}.nii.gz")
        shutil.rmtree(source)  # the masks are gone: nothing downstream can read them
    return scans


def _locator_dice(work_seeds: list[tuple[Path, int]], phantom_seed: int) -> dict:
    """Dice of each seed's located masks against the true masks of the bare scans, regenerated
    from their seed here, after every model was trained and scored (the benchmark's metric is the
    only reader of these labels)."""
    import tempfile

    import numpy as np

    from kidneyssl.io.volumes import read_volume
    from kidneyssl.metrics import dice
    from kidneyssl.phantoms import write_dataset

    n = len(list((work_seeds[0][0] / "scans").glob("*.nii.gz")))
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_dataset(Path(tmp), n, phantom_seed + 1000, resolution="demo", workers=2)
        truth = {f"scan_{i:03d}": np.asarray(read_volume(c / "segmentation.nii.gz").array) > 0
                 for i, c in enumerate(sorted(Path(tmp).glob("case_*")))}
        for work, seed in work_seeds:
            labels = work / "run" / f"seed_{seed}" / "pretrain_u" / "located" / "labels"
            values = [dice(np.asarray(read_volume(labels / f"{k}.nii.gz").array) > 0, t) for k, t in truth.items()]
            out[str(seed)] = {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                              "n": len(values)}
    return out


def combine(works: list[Path], name: str = "science_demo", phantom_seed: int | None = None) -> None:
    """One report and JSON from per-seed runs of this script (they must share data and split)."""
    from kidneyssl.config import load_config
    from kidneyssl.reporting.report import write_experiment_report
    from kidneyssl.training.runfolder import RunFolder
    from kidneyssl.workflows.experiment import experiment_methods, model_names

    runs = [w / "run" for w in works]
    splits = {(r / "split.json").read_text() for r in runs}
    if len(splits) != 1:
        raise SystemExit("the runs do not share one split: they cannot be combined")
    cfg = load_config(runs[0] / "config.yaml")
    # Models, proxy inputs and seeds come from each run's own config, so the report lists all of them.
    rows, timings, seeds = [], {}, []
    budgets: dict = {}
    histories: dict = {}
    proxy: dict = {}
    unlabeled_reports: dict = {}
    work_seeds: list[tuple[Path, int]] = []
    any_unlabeled = False
    for run in runs:
        state = json.loads((run / "experiment.json").read_text())
        run_cfg = load_config(run / "config.yaml")
        unlabeled = bool(state.get("unlabeled"))
        any_unlabeled |= unlabeled
        names = model_names(run_cfg, unlabeled=unlabeled)
        methods = experiment_methods(run_cfg)
        proxy_dirs = {m.name: f"pretrain_{m.key}" for m in methods}  # as the experiment labels them
        if unlabeled:
            side = next(m for m in methods if m.method == "side")
            proxy_dirs[f"{side.name}+U"] = "pretrain_u"
        for seed in run_cfg.protocol.seeds:
            if int(seed) in seeds:
                raise SystemExit(f"seed {seed} is in more than one of the runs: they cannot be combined")
            seeds.append(int(seed))
            work_seeds.append((run.parent, int(seed)))
            for model, sub in names.items():
                rows += json.loads((run / "eval" / f"seed_{seed}" / f"{model}.json").read_text())
                histories.setdefault(model, {})[seed] = RunFolder(run / f"seed_{seed}" / sub).read_history()
            for v, sub in proxy_dirs.items():
                proxy.setdefault(v, {})[seed] = RunFolder(run / f"seed_{seed}" / sub).read_history()
            if unlabeled:
                unlabeled_reports[int(seed)] = (RunFolder(run / f"seed_{seed}" / "pretrain_u").info() or {})[
                    "unlabeled"]
        timings.update({f"{run.parent.name}/{k}": v for k, v in state["timings"].items()})
        for method, by_seed in _budgets([(run, int(s)) for s in run_cfg.protocol.seeds], run_cfg,
                                        state["timings"]).items():
            budgets.setdefault(method, {}).update(by_seed)
    split = json.loads(splits.pop())
    out_dir = works[0].parent / f"{name}_report"
    _, differences = write_experiment_report(
        out_dir, rows, histories, proxy, [], json.loads(json.dumps(_plain_cfg(cfg))), timings=timings,
        split={"train": len(split["train"]), "val": len(split["val"]), "test": len(split["test"]),
               "test_source": "held out of the phantoms"}, unlabeled=unlabeled_reports or None)
    from kidneyssl.metrics import summarize

    summary = {f"{n}/{p}": summarize([r for r in rows if r["model"] == n and r["part"] == p])
               for n in histories for p in ("val", "test")}
    out = {
        "what": "demo-scale experiment on phantoms: pretraining methods vs scratch, seeds, held-out test part "
                "(seeds run as separate one-thread processes, combined)",
        "seeds": sorted(seeds), "models": list(histories), "pretraining_methods": list(proxy),
        "config_of_first_run": _plain_cfg(cfg), "split": split,
        "paired_differences": differences["paired"], "n_comparisons": differences["n_comparisons"],
        "verdict_rule": differences["rule"], "epochs_to_reach": differences["epochs_to_reach"],
        "summary": {k: {m: v[m] for m in ("dice", "hd95_mm")} | {"n_cases": v["n_cases"]}
                    for k, v in summary.items()},
        "proxy_final_val_accuracy": {v: {s: (h[-1].get("val_accuracy") if h else None) for s, h in by.items()}
                                     for v, by in proxy.items()},
        "pretraining_final_val_loss": {v: {s: (h[-1].get("val_loss") if h else None) for s, h in by.items()}
                                       for v, by in proxy.items()},
        "pretraining_budget": budgets,
        "unlabeled": unlabeled_reports,
        "locator_dice_on_unlabeled_scans": (_locator_dice(work_seeds, phantom_seed)
                                            if any_unlabeled and phantom_seed is not None else None),
        "timings_s": timings, "load_average_end": os.getloadavg(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    write_results(out, out_dir, name)


def write_results(out: dict, report_dir: Path, name: str = "science_demo") -> None:
    """The JSON, a copy of the report with its figures (links renamed), and the differences printed."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(out, indent=2, default=str) + "\n")
    text = (report_dir / "report.md").read_text()
    for fig in ("fig5_dice_curves.png", "proxy_accuracy.png", "pretraining_val_loss.png", "fig4_overlays.png"):
        if (report_dir / fig).is_file():
            shutil.copy(report_dir / fig, RESULTS / f"{name}_{fig}")
            text = text.replace(f"]({fig})", f"]({name}_{fig})")
    (RESULTS / f"{name}_report.md").write_text(text)
    for d in out["paired_differences"]:
        print(f"{d['model']} - {d['reference']}  {d['part']:4s} {d['metric']:8s} {d['mean']:+.4f} "
              f"[{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] ({d['interval']}, {d['n_cases']} cases x "
              f"{d['n_seeds']} seeds): {d['conclusion']}")


def _budgets(run_seeds: list[tuple[Path, int]], cfg: object, timings: dict) -> dict:
    """Each pretraining method's budget per seed: optimiser steps and samples (crops, or pairs for
    the side proxy) from its last history row, and the stage's wall seconds."""
    from kidneyssl.training.runfolder import RunFolder
    from kidneyssl.workflows.experiment import experiment_methods

    out: dict = {}
    for run, seed in run_seeds:
        for m in experiment_methods(cfg):  # type: ignore[arg-type]
            history = RunFolder(run / f"seed_{seed}" / f"pretrain_{m.key}").read_history()
            last = history[-1] if history else {}
            out.setdefault(m.name, {})[seed] = {
                "optimizer_steps": last.get("optimizer_steps"), "samples_seen": last.get("samples_seen"),
                "wall_seconds": timings.get(f"seed_{seed}/pretrain_{m.key}")}
    return out


def _plain_cfg(cfg: object) -> dict:
    from kidneyssl.config import config_to_dict

    return config_to_dict(cfg)


if __name__ == "__main__":
    main()
