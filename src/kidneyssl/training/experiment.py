"""The paper's experiment (section 3.3): prepare, pretrain once, train MwS and MwoS with identical
settings, seeds and split, evaluate both on the validation cases, write the report.

Experiment folder::

    RUN/experiment.json   stage status and timings
    RUN/config.yaml       resolved config
    RUN/cache/            prepared cache (unless --cache points elsewhere)
    RUN/pretrain/         siamese run folder
    RUN/mws/, RUN/mwos/   segmentation run folders (MwS: encoder from pretrain/best.pt)
    RUN/eval/<model>.json per-case metrics on the original grid
    RUN/report/           Table 1, Fig. 4, Fig. 5, report.md, report.html

Re-running the same command skips finished stages and resumes an interrupted training run.
Evaluation uses each model's LAST checkpoint (the end of training, as in the paper's Table 1),
not the epoch that scored best on the validation set (that would select on the test data).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kidneyssl.config import ExperimentConfig, config_to_dict, save_config
from kidneyssl.errors import KidneySSLError, RunFolderError
from kidneyssl.io.atomic import atomic_write_json
from kidneyssl.training.distributed import DistContext, init_distributed, shard, gather_objects

__all__ = ["ExperimentResult", "run_experiment", "evaluate_model", "MODELS"]

log = logging.getLogger(__name__)

#: Model name -> run sub-folder.
MODELS = {"MwoS": "mwos", "MwS": "mws"}
N_OVERLAY_CASES = 3


@dataclass(frozen=True)
class ExperimentResult:
    """Paths and headline numbers of a finished experiment."""

    run_dir: Path
    report: Path
    final_val_dice: dict[str, float]
    summary: dict[str, Any]
    timings: dict[str, float]


def _state_path(run: Path) -> Path:
    return run / "experiment.json"


def _claim(run: Path, cfg: ExperimentConfig, force: bool) -> dict[str, Any]:
    state_file = _state_path(run)
    if force:
        return {}
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except ValueError as err:
            raise RunFolderError(f"{state_file}: unreadable ({err}); use --force to start over") from err
        if state.get("config") != config_to_dict(cfg):
            raise RunFolderError(
                f"{run}: holds an experiment with another config; re-run with the same options to "
                "continue it, --force to start over, or choose another --out"
            )
        return state
    if run.is_dir() and any(run.iterdir()) and not force:
        raise RunFolderError(f"{run}: output folder is not empty and holds no experiment; use --force "
                             "or choose another --out")
    return {}


def _stage_folder_args(folder: Path, kind: str, force_fresh: bool) -> dict[str, bool]:
    """resume/force flags that continue a stage folder in whatever state it is."""
    from kidneyssl.training.runfolder import RunFolder

    rf = RunFolder(folder)
    info = rf.info()
    if force_fresh:
        return {"resume": False, "force": True}
    if info and info.get("kind") == kind and rf.last.is_file():
        return {"resume": True, "force": False}
    return {"resume": False, "force": True}


def evaluate_model(checkpoint: str | Path, cache: Any, case_ids: Sequence[str], gt_paths: dict[str, Path],
                   ctx: DistContext, keep_masks: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-case metrics of a segmentation checkpoint on ``case_ids``, on the ORIGINAL grid.

    Each case: whole-volume inference on the cached preprocessed image (halves, as ``predict``),
    threshold, largest component per side (``cfg.inference.largest_component``), mapped back to the
    original file's grid with the cached :class:`PreprocessRecord`, then
    :func:`kidneyssl.metrics.compute_case_metrics` against the original segmentation (kidney =
    label > 0) with the original spacing.

    Returns:
        ``(rows, masks)``: one metrics row per case (with ``case_id``), in ``case_ids`` order, and
        the preprocessed-grid masks of the cases in ``keep_masks`` (for Fig. 4).
    """
    from kidneyssl.inference.predict import keep_kidney_components, load_model
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.metrics import compute_case_metrics
    from kidneyssl.preprocessing.pipeline import PreprocessRecord
    from kidneyssl.training.finetune import infer_cached_case

    model, cfg = load_model(checkpoint, ctx.device)
    rows: dict[str, dict[str, Any]] = {}
    masks: dict[str, np.ndarray] = {}
    for cid in shard(list(case_ids), ctx):
        case = cache.load(cid, mmap=True)
        prob = infer_cached_case(model, case, cfg, ctx.device)
        # exactly what `kidneyssl predict` does: post-process, restore probabilities, threshold
        mask = keep_kidney_components(prob, int(case.meta["split_x"]), cfg.inference)
        if cid in keep_masks:
            masks[cid] = mask
        record = PreprocessRecord.from_dict(case.meta["record"])
        pred = record.restore(prob, order="linear", threshold=cfg.inference.threshold) > 0
        gt_vol = read_volume(gt_paths[cid])
        gt = np.asarray(gt_vol.array) > 0
        if gt.shape != pred.shape:
            raise KidneySSLError(f"{gt_paths[cid]}: segmentation shape {gt.shape} differs from the "
                                 f"restored prediction {pred.shape} (cache prepared from other data?)")
        rows[cid] = {"case_id": cid, **compute_case_metrics(pred, gt, tuple(gt_vol.geometry.spacing))}
    merged_rows: dict[str, dict[str, Any]] = {}
    merged_masks: dict[str, np.ndarray] = {}
    for part_rows, part_masks in gather_objects((rows, masks), ctx):
        merged_rows.update(part_rows)
        merged_masks.update(part_masks)
    return [merged_rows[c] for c in case_ids], merged_masks


def run_experiment(data_dir: str | Path, out_dir: str | Path, cfg: ExperimentConfig, *,
                   cache_dir: str | Path | None = None, force: bool = False, device: str = "auto",
                   workers: int | None = None) -> ExperimentResult:
    """Run (or continue) the whole experiment in ``out_dir``; see the module docstring."""
    from kidneyssl.data.cache import open_cache, prepare_dataset
    from kidneyssl.io.kits19 import find_cases
    from kidneyssl.reporting.figures import OverlayCase
    from kidneyssl.reporting.report import write_experiment_report
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.pretrain import pretrain_siamese
    from kidneyssl.training.runfolder import RunFolder, load_split

    ctx = init_distributed(device)
    run = Path(out_dir)
    state = _claim(run, cfg, force)
    fresh = not state
    stages: dict[str, Any] = dict(state.get("stages", {}))
    timings: dict[str, float] = dict(state.get("timings", {}))
    cache_path = Path(cache_dir) if cache_dir else run / "cache"

    def mark(stage: str, seconds: float) -> None:
        stages[stage] = "done"
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 1)
        if ctx.is_main:
            atomic_write_json(_state_path(run), {"config": config_to_dict(cfg), "data": str(Path(data_dir).resolve()),
                                                 "cache": str(cache_path.resolve()), "stages": stages,
                                                 "timings": timings})

    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    # 1. prepare (rank 0 writes the cache; the others wait and open it)
    if stages.get("prepare") != "done":
        t0 = time.perf_counter()
        if ctx.is_main:
            log.info("== prepare: %s -> %s", data_dir, cache_path)
            prepare_dataset(data_dir, cache_path, cfg.preprocess, workers=workers or 2)
        gather_objects(None, ctx)
        mark("prepare", time.perf_counter() - t0)
    cache = open_cache(cache_path, expected=cfg.preprocess)

    # 2. pretrain once
    pre_dir = run / "pretrain"
    if stages.get("pretrain") != "done":
        t0 = time.perf_counter()
        log.info("== pretrain (siamese left/right proxy task): %s", pre_dir)
        pretrain_siamese(cache_path, pre_dir, cfg, ctx=ctx,
                         **_stage_folder_args(pre_dir, "siamese", fresh))
        mark("pretrain", time.perf_counter() - t0)
    split_file = pre_dir / "split.json"
    init_ckpt = pre_dir / "best.pt"

    # 3. MwS and MwoS with the same config, seeds and split
    for name, sub in (("MwS", "mws"), ("MwoS", "mwos")):
        if stages.get(f"train_{name}") == "done":
            continue
        t0 = time.perf_counter()
        log.info("== train %s (%s): %s", name, "encoder from the siamese network" if name == "MwS"
                 else "from scratch", run / sub)
        train_segmentation(cache_path, run / sub, cfg, init=str(init_ckpt) if name == "MwS" else "scratch",
                           split_file=split_file, ctx=ctx, **_stage_folder_args(run / sub, "segmentation", fresh))
        mark(f"train_{name}", time.perf_counter() - t0)

    # 4. evaluate both on the validation cases, on the original grid
    split = load_split(split_file)
    val_ids = list(split.val)
    overlay_ids = val_ids[:N_OVERLAY_CASES]
    gt_paths = {c.case_id: c.segmentation for c in find_cases(data_dir) if c.segmentation is not None}
    missing = [c for c in val_ids if c not in gt_paths]
    if missing:
        raise KidneySSLError(f"{data_dir}: no segmentation for validation case(s) {missing[:5]}")
    eval_dir = run / "eval"
    per_case: dict[str, list[dict[str, Any]]] = {}
    overlay_masks: dict[str, dict[str, np.ndarray]] = {}
    for name, sub in MODELS.items():
        rows_file, masks_file = eval_dir / f"{name}.json", eval_dir / f"{name}_overlay_masks.npz"
        if stages.get(f"eval_{name}") == "done" and rows_file.is_file() and masks_file.is_file():
            per_case[name] = json.loads(rows_file.read_text())
            with np.load(masks_file) as npz:
                overlay_masks[name] = {k: npz[k] for k in npz.files}
            continue
        t0 = time.perf_counter()
        log.info("== evaluate %s on %d validation cases", name, len(val_ids))
        rows, masks = evaluate_model(RunFolder(run / sub).last, cache, val_ids, gt_paths, ctx, overlay_ids)
        per_case[name], overlay_masks[name] = rows, masks
        if ctx.is_main:
            atomic_write_json(rows_file, rows)
            from kidneyssl.io.atomic import atomic_save

            atomic_save(masks_file, lambda p: np.savez_compressed(p, **masks), suffix=".npz")
        mark(f"eval_{name}", time.perf_counter() - t0)

    # 5. report
    histories = {name: RunFolder(run / sub).read_history() for name, sub in MODELS.items()}
    report_path = run / "report" / "report.md"
    if ctx.is_main:
        t0 = time.perf_counter()
        overlays = []
        for cid in overlay_ids:
            case = cache.load(cid, mmap=True)
            overlays.append(OverlayCase(cid, np.asarray(case.image), np.asarray(case.label) > 0,
                                        {name: overlay_masks[name][cid] for name in MODELS}))
        report_path = write_experiment_report(run / "report", per_case, histories, overlays, config_to_dict(cfg),
                                              timings=dict(timings))
        mark("report", time.perf_counter() - t0)
    from kidneyssl.metrics import summarize

    summary = {name: summarize([{k: v for k, v in r.items() if k != "case_id"} for r in rows])
               for name, rows in per_case.items()}
    final = {name: float(h[-1]["val_dice"]) if h else float("nan") for name, h in histories.items()}
    return ExperimentResult(run, Path(report_path), final, summary, dict(timings))


def run_demo(out_dir: str | Path, cfg: ExperimentConfig, *, force: bool = False,
             device: str = "auto") -> ExperimentResult:
    """Synthesise ``cfg.synth`` phantoms into ``out_dir/data`` (once) and run the experiment in
    ``out_dir/run``. ``cfg.synth`` keys: ``cases``, ``seed``, ``resolution`` (``demo``/``full``)."""
    from kidneyssl.phantoms import write_dataset

    import os

    out = Path(out_dir)
    data = out / "data"
    synth = {"cases": 24, "seed": 0, "resolution": "demo", **cfg.synth}
    t0 = time.perf_counter()
    log.info("== phantoms: %d cases (seed %d, %s resolution) in %s", int(synth["cases"]), int(synth["seed"]),
             synth["resolution"], data)
    # Re-running fills in missing cases only; a folder holding another dataset is refused (or --force).
    write_dataset(data, int(synth["cases"]), int(synth["seed"]), resolution=str(synth["resolution"]),
                  workers=max(1, min(4, os.cpu_count() or 1)), force=force)
    log.info("phantoms ready in %.1f s", time.perf_counter() - t0)
    return run_experiment(data, out / "run", cfg, force=force, device=device)


__all__.append("run_demo")
