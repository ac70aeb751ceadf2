"""The paper's experiment (section 3.3), run as a reviewer would want it: prepare, then for every
seed pretrain the siamese network once per proxy variant, train MwS (one per variant) and MwoS with
identical settings, seed and split, score every model with the one inference procedure on the
validation and the held-out test cases, and write the report.

Experiment folder::

    RUN/experiment.json                stage status and timings
    RUN/config.yaml                    resolved config
    RUN/split.json                     train / validation / test case ids (shared by every seed)
    RUN/cache/, RUN/test_cache/        prepared caches (test_cache only with a separate test dataset)
    RUN/seed_S/pretrain_V/             siamese run of seed S, proxy variant V (region | masked)
    RUN/seed_S/mws_V/, RUN/seed_S/mwos/   segmentation runs (MwS-V: encoder from pretrain_V/best.pt)
    RUN/seed_S/pretrain_u/, mws_u/     with ``unlabeled``: siamese run on the training cases plus the
                                       located unlabeled scans (pretrain_u/located/: the scans as
                                       seed S's MwoS located them), and MwS+U from it
    RUN/eval/seed_S/<model>.json       per-case metrics on the original grid (validation and test)
    RUN/report/                        Table 1, paired differences, Fig. 4, Fig. 5, report.md/.html

The procedure, and what it guarantees:

* The split (``protocol.split_seed``) is made once. Training and pretraining read only its
  training cases; pretraining holds out a part of them for its own validation and ``best.pt``
  choice (:func:`kidneyssl.training.pretrain.proxy_split`). MwS refuses a siamese checkpoint that
  touched a validation or test case.
* Every model is scored with its LAST checkpoint (the end of training, as in the paper's Table 1):
  nothing is selected on validation data, and test cases are scored once, at the end.
* Scoring calls :func:`kidneyssl.inference.segment.segment_image` with the cached image and its
  preprocessing record only (no label, no label-derived plane): the same function, and so the
  same masks, as ``kidneyssl predict``. The label is read by the metric alone.

* With scans without masks (``unlabeled``), a third model, **MwS+U**, is pretrained (first proxy
  variant) on the training cases plus the unlabeled scans whose kidneys seed S's MwoS located
  (trained on the training cases only, so the locator never saw a validation or test case); a
  folder already located by ``kidneyssl locate`` is used as it is, after the same check.

Re-running the same command skips finished stages and resumes an interrupted training run; adding
seeds or proxy variants (``--seeds 0 1 2``) continues the same experiment with the new runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kidneyssl.config import ExperimentConfig, config_to_dict, save_config
from kidneyssl.data.cache import Cache
from kidneyssl.errors import KidneySSLError, RunFolderError
from kidneyssl.io.atomic import atomic_write_json
from kidneyssl.training.distributed import (
    DistContext,
    gather_objects,
    init_distributed,
    shard,
)
from kidneyssl.training.plan import PlanOptions, announce_plan, remaining_after
from kidneyssl.training.split import Split

__all__ = ["ExperimentResult", "run_experiment", "evaluate_model", "model_names", "seed_config"]

log = logging.getLogger(__name__)

N_OVERLAY_CASES = 3
#: Protocol keys that only add runs; an experiment may be continued with other values of these.
_EXTENDABLE = ("seeds", "proxy_variants")


@dataclass(frozen=True)
class ExperimentResult:
    """Paths and headline numbers of a finished experiment."""

    run_dir: Path
    report: Path
    final_val_dice: dict[str, float]
    summary: dict[str, Any]
    timings: dict[str, float]
    differences: dict[str, Any] = dataclasses.field(default_factory=dict)


#: The model pretrained on annotated plus located unlabeled scans, its segmentation run's folder,
#: and the key of its pretraining run (folder ``pretrain_u``, stage ``seed_S/pretrain_u``).
UNLABELED_MODEL, UNLABELED_RUN, UNLABELED_KEY = "MwS+U", "mws_u", "u"


def model_names(cfg: ExperimentConfig, unlabeled: bool = False) -> dict[str, str]:
    """Model name -> run sub-folder name: ``MwS-<variant>`` per proxy variant, ``MwoS``, then
    (with ``unlabeled``) ``MwS+U``, in the order they are trained."""
    names = {f"MwS-{v}": f"mws_{v}" for v in cfg.protocol.proxy_variants}
    names["MwoS"] = "mwos"
    if unlabeled:
        names[UNLABELED_MODEL] = UNLABELED_RUN
    return names


def seed_config(cfg: ExperimentConfig, seed: int, proxy_input: str | None = None) -> ExperimentConfig:
    """``cfg`` for one seed's runs (``pretrain.seed = train.seed = seed``) and proxy variant."""
    pretrain = dataclasses.replace(cfg.pretrain, seed=int(seed),
                                   proxy_input=proxy_input or cfg.pretrain.proxy_input)
    return dataclasses.replace(cfg, pretrain=pretrain, train=dataclasses.replace(cfg.train, seed=int(seed)))


def _state_path(run: Path) -> Path:
    return run / "experiment.json"


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(cfg_dict))
    for key in _EXTENDABLE:
        out.get("protocol", {}).pop(key, None)
    return out


def _claim(run: Path, cfg: ExperimentConfig, force: bool) -> dict[str, Any]:
    state_file = _state_path(run)
    if force:
        return {}
    if state_file.is_file():
        try:
            state = json.loads(state_file.read_text())
        except ValueError as err:
            raise RunFolderError(f"{state_file}: unreadable ({err}); start over", remedy=("force",)) from err
        if _comparable(state.get("config", {})) != _comparable(config_to_dict(cfg)):
            raise RunFolderError(
                f"{run}: holds an experiment with another config; re-run with the same options to "
                "continue it (more seeds or proxy variants are fine), start over, or choose another "
                "output folder", remedy=("force", "out"))
        return state
    if run.is_dir() and any(run.iterdir()) and not force:
        raise RunFolderError(f"{run}: output folder is not empty and holds no experiment; replace its "
                             "contents or choose another output folder", remedy=("force", "out"))
    return {}


def _stage_folder_args(folder: Path, kind: str, force_fresh: bool) -> dict[str, Any]:
    """resume/force flags that continue a stage folder in whatever state it is."""
    from kidneyssl.training.runfolder import RunFolder

    rf = RunFolder(folder)
    info = rf.info()
    if force_fresh:
        return {"resume": False, "force": True}
    if info and info.get("kind") == kind and rf.last.is_file():
        return {"resume": True, "force": False}
    return {"resume": False, "force": True}


def evaluate_model(checkpoint: str | Path, cache: Cache, case_ids: Sequence[str], gt_paths: dict[str, Path],
                   ctx: DistContext, keep_masks: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-case metrics of a segmentation checkpoint on ``case_ids``, on the ORIGINAL grid.

    Each case: :func:`kidneyssl.inference.segment.segment_image` on the cached image with its
    preprocessing record -- exactly what ``kidneyssl predict`` does with the original file -- then
    :func:`kidneyssl.metrics.compute_case_metrics` against the original segmentation (kidney = the
    cache's label policy, e.g. label > 0 for KiTS19) with the original spacing. The label is read here, after the prediction exists.

    Returns:
        ``(rows, masks)``: one metrics row per case (with ``case_id`` and ``strategy``), in
        ``case_ids`` order, and the preprocessed-grid masks of the cases in ``keep_masks`` (Fig. 4).
    """
    from kidneyssl.inference.predict import load_model
    from kidneyssl.inference.segment import segment_image
    from kidneyssl.io.volumes import read_volume
    from kidneyssl.metrics import compute_case_metrics

    model, cfg = load_model(checkpoint, ctx.device)
    rows: dict[str, dict[str, Any]] = {}
    masks: dict[str, np.ndarray] = {}
    for cid in shard(list(case_ids), ctx):
        case = cache.load(cid, mmap=True)
        seg = segment_image(model, case.image, cfg, record=case.record, device=ctx.device)
        if cid in keep_masks:
            masks[cid] = seg.mask
        pred = seg.original_mask
        assert pred is not None
        gt_vol = read_volume(gt_paths[cid])
        gt = cache.labels.target(np.asarray(gt_vol.array))  # the cache's label policy (KiTS19: > 0)
        if gt.shape != pred.shape:
            raise KidneySSLError(f"{gt_paths[cid]}: segmentation shape {gt.shape} differs from the "
                                 f"restored prediction {pred.shape} (cache prepared from other data?)")
        rows[cid] = {"case_id": cid, "strategy": seg.strategy,
                     **compute_case_metrics(pred > 0, gt, tuple(gt_vol.geometry.spacing))}
    merged_rows: dict[str, dict[str, Any]] = {}
    merged_masks: dict[str, np.ndarray] = {}
    for part_rows, part_masks in gather_objects((rows, masks), ctx):
        merged_rows.update(part_rows)
        merged_masks.update(part_masks)
    return [merged_rows[c] for c in case_ids], merged_masks


def _pretrain_keys(cfg: ExperimentConfig, names: dict[str, str]) -> list[str]:
    """The pretraining runs of one seed: one per proxy variant (and ``u`` with unlabeled scans)."""
    return list(cfg.protocol.proxy_variants) + ([UNLABELED_KEY] if UNLABELED_MODEL in names else [])


def _plan_experiment(cfg: ExperimentConfig, cache: Cache, split: Split, ctx: DistContext, done: dict[str, Any],
                     names: dict[str, str], options: Any) -> list[Any]:
    """The stages still to run, each seed and proxy variant, with time estimates from one probe of
    a pretraining step and one of a segmentation step (they cost the same for every seed; locating
    the unlabeled scans is not estimated)."""
    from kidneyssl.training.plan import estimate_stage

    probe = options.probe and options.announce and ctx.is_main
    seed0 = cfg.protocol.seeds[0]
    variants = _pretrain_keys(cfg, names)
    pending = [(s, v) for s in cfg.protocol.seeds for v in variants
               if done.get(f"seed_{s}/pretrain_{v}") != "done"]
    pending_train = [(s, n) for s in cfg.protocol.seeds for n in names if done.get(f"seed_{s}/train_{n}") != "done"]
    out = []
    if pending:
        siamese = estimate_stage("pretrain", "siamese", seed_config(cfg, seed0), cache, split, ctx, probe=probe)
        out += [dataclasses.replace(siamese, name=f"seed_{s}/pretrain_{v}") for s, v in pending]
    if pending_train:
        seg = estimate_stage("train", "segmentation", seed_config(cfg, seed0), cache, split, ctx, probe=probe)
        out += [dataclasses.replace(seg, name=f"seed_{s}/train_{n}") for s, n in pending_train]
    keys = [f"seed_{s}/{k}" for s in cfg.protocol.seeds for k in _stage_order(cfg, names)]
    return sorted(out, key=lambda p: keys.index(p.name))


def _stage_order(cfg: ExperimentConfig, names: dict[str, str]) -> list[str]:
    """One seed's training stages in the order they run: pretraining per proxy variant, MwS per
    variant and MwoS, then (unlabeled) pretraining with the scans MwoS located, and MwS+U."""
    order = [f"pretrain_{v}" for v in cfg.protocol.proxy_variants]
    order += [f"train_{n}" for n in names if n != UNLABELED_MODEL]
    if UNLABELED_MODEL in names:
        order += [f"pretrain_{UNLABELED_KEY}", f"train_{UNLABELED_MODEL}"]
    return order


def _make_split(run: Path, cache: Cache, cfg: ExperimentConfig, test_cache: Cache | None, is_main: bool) -> Split:
    """The experiment's split, made once and kept in ``RUN/split.json``."""
    from kidneyssl.training.finetune import annotated_case_ids
    from kidneyssl.training.split import load_split, make_split, save_split

    path = run / "split.json"
    if path.is_file():
        return load_split(path)
    ids = annotated_case_ids(cache)
    test_fraction = 0.0 if test_cache is not None else cfg.protocol.test_fraction
    split = make_split(ids, cfg.train.val_fraction, cfg.protocol.split_seed, test_fraction=test_fraction)
    if is_main:
        save_split(split, path)
    return split


def run_experiment(data_dir: str | Path, out_dir: str | Path, cfg: ExperimentConfig, *,
                   cache_dir: str | Path | None = None, test_data: str | Path | None = None,
                   force: bool = False, device: str = "auto", workers: int | None = None,
                   data_format: str | None = None, kidney_labels: tuple[int, ...] | None = None,
                   plan: Any = None, unlabeled: str | Path | None = None) -> ExperimentResult | None:
    """Run (or continue) the whole experiment in ``out_dir``; see the module docstring.

    Args:
        data_dir: annotated dataset (KiTS19 layout) for training, validation and (by default) test.
        out_dir: experiment folder.
        cfg: resolved config (``cfg.protocol``: seeds, split seed, test fraction, proxy variants).
        cache_dir: where to prepare ``data_dir`` (default ``out_dir/cache``).
        test_data: a separate annotated dataset used only as the test part (then no test cases
            are taken from ``data_dir``).
        force: start over.
        device: ``auto``, ``cpu``, ``cuda``.
        workers: prepare's worker processes.
        data_format, kidney_labels: dataset format (``kits19``, ``kits23``, ``nnunet``, ``pairs``;
            default: detected) and the labels forming the kidney target (default: the format's);
            see :func:`kidneyssl.io.datasets.open_dataset`. ``test_data`` is read the same way.
        plan: :class:`kidneyssl.training.plan.PlanOptions`. Before the first training step the
            whole remaining experiment is planned (every seed's stages, with a timed probe of one
            pretraining and one segmentation step on the device) and printed; each stage's epoch
            lines then carry the experiment's ETA. With ``dry_run`` the caches are prepared (the
            probe needs them), the plan is printed and nothing else runs (returns ``None``).
        unlabeled: scans without masks (any input ``kidneyssl locate`` reads, or a ``locate``
            output): adds MwS+U (see the module docstring). Kept in ``experiment.json``; a
            continued experiment uses the recorded folder.
    """
    from kidneyssl.data.cache import open_cache
    from kidneyssl.data.prepare import prepare_dataset
    from kidneyssl.io.datasets import open_dataset
    from kidneyssl.reporting.figures import OverlayCase, refresh_history_plot
    from kidneyssl.reporting.report import write_experiment_report
    from kidneyssl.training.finetune import train_segmentation
    from kidneyssl.training.pretrain import pretrain_siamese
    from kidneyssl.training.runfolder import RunFolder

    ctx = init_distributed(device)
    run = Path(out_dir)
    state = _claim(run, cfg, force)
    fresh = not state
    stages: dict[str, Any] = dict(state.get("stages", {}))
    if unlabeled is not None and state.get("unlabeled") and \
            Path(unlabeled).resolve() != Path(state["unlabeled"]):
        raise RunFolderError(f"{run}: this experiment's unlabeled scans are {state['unlabeled']}, not "
                             f"{Path(unlabeled).resolve()}; start over or use another output folder",
                             remedy=("force", "out"))
    unlabeled_dir = Path(unlabeled).resolve() if unlabeled is not None else (
        Path(state["unlabeled"]) if state.get("unlabeled") else None)
    timings: dict[str, float] = dict(state.get("timings", {}))
    cache_path = Path(cache_dir) if cache_dir else run / "cache"
    test_cache_path = run / "test_cache" if test_data is not None else None

    def mark(stage: str, seconds: float) -> None:
        stages[stage] = "done"
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 1)
        if ctx.is_main:
            atomic_write_json(_state_path(run), {
                "config": config_to_dict(cfg), "data": str(Path(data_dir).resolve()),
                "test_data": str(Path(test_data).resolve()) if test_data is not None else None,
                "cache": str(cache_path.resolve()), "stages": stages, "timings": timings,
                "unlabeled": str(unlabeled_dir) if unlabeled_dir is not None else None})

    if ctx.is_main:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")

    # 1. prepare (rank 0 writes the caches; the others wait and open them)
    for stage, src, dst in (("prepare", data_dir, cache_path), ("prepare_test", test_data, test_cache_path)):
        if src is None or dst is None or stages.get(stage) == "done":
            continue
        t0 = time.perf_counter()
        if ctx.is_main:
            log.info("== %s: %s -> %s", stage, src, dst)
            prepare_dataset(src, dst, cfg.preprocess, workers=workers or 2, data_format=data_format,
                            kidney_labels=kidney_labels)
        gather_objects(None, ctx)
        mark(stage, time.perf_counter() - t0)
    cache = open_cache(cache_path, expected=cfg.preprocess)
    test_cache = open_cache(test_cache_path, expected=cfg.preprocess) if test_cache_path is not None else None
    split = _make_split(run, cache, cfg, test_cache, ctx.is_main)
    gather_objects(None, ctx)
    split_file = run / "split.json"
    if test_cache is not None:
        from kidneyssl.training.finetune import annotated_case_ids

        test_ids, test_source = annotated_case_ids(test_cache), test_cache
        assert test_data is not None  # a test cache exists only for a test dataset
        test_gt = {c.case_id: c.segmentation for c in open_dataset(test_data, data_format, kidney_labels).cases
                   if c.segmentation is not None}
    else:
        test_ids, test_source = list(split.test), cache
        test_gt = {}
    gt_paths = {c.case_id: c.segmentation for c in open_dataset(data_dir, data_format, kidney_labels).cases
                if c.segmentation is not None}
    test_gt = test_gt or gt_paths
    missing = [c for c in list(split.val) if c not in gt_paths] + [c for c in test_ids if c not in test_gt]
    if missing:
        raise KidneySSLError(f"no segmentation file for scored case(s) {missing[:5]}")
    log.info("experiment: %d training, %d validation, %d test cases%s; seeds %s; proxy variants %s",
             len(split.train), len(split.val), len(test_ids),
             f" (test from {test_data})" if test_data is not None else "",
             list(cfg.protocol.seeds), list(cfg.protocol.proxy_variants))

    names = model_names(cfg, unlabeled=unlabeled_dir is not None)
    options = plan or PlanOptions()
    stage_plans = _plan_experiment(cfg, cache, split, ctx, stages, names, options)
    if not announce_plan(stage_plans, options, ctx=ctx, cfg=cfg):
        return None
    quiet = dataclasses.replace(options, announce=False)

    def stage_options(stage: str) -> Any:
        later = remaining_after(stage_plans, stage) if any(p.name == stage for p in stage_plans) else 0.0
        return dataclasses.replace(quiet, stage_name=stage, later_seconds=later)

    rows: list[dict[str, Any]] = []
    histories: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in names}
    proxy_keys = {v: v for v in cfg.protocol.proxy_variants}
    if unlabeled_dir is not None:
        proxy_keys[UNLABELED_KEY] = f"{cfg.protocol.proxy_variants[0]}+U"
    proxy_histories: dict[str, dict[int, list[dict[str, Any]]]] = {k: {} for k in proxy_keys.values()}
    unlabeled_reports: dict[int, dict[str, Any]] = {}
    overlay_masks: dict[str, dict[str, np.ndarray]] = {}
    first_seed = cfg.protocol.seeds[0]
    overlay_ids = list(test_ids or split.val)[:N_OVERLAY_CASES]
    overlay_source = test_source if test_ids else cache
    for seed in cfg.protocol.seeds:
        seed_dir = run / f"seed_{seed}"

        def pretrain(key: str, seed: int = seed, seed_dir: Path = seed_dir) -> None:
            """Stage ``pretrain_<key>``: a proxy variant, or ``u`` (first variant + unlabeled scans)."""
            stage, folder = f"seed_{seed}/pretrain_{key}", seed_dir / f"pretrain_{key}"
            variant = cfg.protocol.proxy_variants[0] if key == UNLABELED_KEY else key
            if stages.get(stage) != "done":
                t0 = time.perf_counter()
                extra: dict[str, Any] = {}
                if key == UNLABELED_KEY:
                    assert unlabeled_dir is not None
                    extra = {"unlabeled": unlabeled_dir, "locator": RunFolder(seed_dir / "mwos").last}
                log.info("== %s (siamese left/right proxy task, %s crops%s): %s", stage, variant,
                         " + unlabeled scans located by this seed's MwoS" if key == UNLABELED_KEY else "", folder)
                pretrain_siamese(cache_path, folder, seed_config(cfg, seed, variant), split_file=split_file,
                                 ctx=ctx, plan=stage_options(stage), on_epoch=refresh_history_plot,
                                 **_stage_folder_args(folder, "siamese", fresh), **extra)
                mark(stage, time.perf_counter() - t0)
            proxy_histories[proxy_keys[key]][seed] = RunFolder(folder).read_history()
            if key == UNLABELED_KEY:
                unlabeled_reports[seed] = (RunFolder(folder).info() or {}).get("unlabeled", {})

        def train(name: str, seed: int = seed, seed_dir: Path = seed_dir) -> None:
            """Stage ``train_<name>``: MwS from its siamese run, or MwoS from scratch."""
            stage, folder = f"seed_{seed}/train_{name}", seed_dir / names[name]
            key = UNLABELED_KEY if name == UNLABELED_MODEL else (name.split("-", 1)[1] if name.startswith("MwS-") else None)
            if stages.get(stage) != "done":
                t0 = time.perf_counter()
                init = str(seed_dir / f"pretrain_{key}" / "best.pt") if key else "scratch"
                log.info("== %s (%s): %s", stage, f"encoder from the siamese network pretrain_{key}" if key
                         else "from scratch", folder)
                variant = cfg.protocol.proxy_variants[0] if key == UNLABELED_KEY else key
                train_segmentation(cache_path, folder, seed_config(cfg, seed, variant), init=init,
                                   split_file=split_file, ctx=ctx, plan=stage_options(stage),
                                   on_epoch=refresh_history_plot,
                                   **_stage_folder_args(folder, "segmentation", fresh))
                mark(stage, time.perf_counter() - t0)
            histories[name][seed] = RunFolder(folder).read_history()

        # 2.-3. pretrain per proxy variant; MwS per variant and MwoS with the same config, seed and
        # split; then (unlabeled) pretrain with the scans this seed's MwoS located, and MwS+U
        for step in _stage_order(cfg, names):
            kind, key = step.split("_", 1)
            if kind == "pretrain":
                pretrain(key)
            else:
                train(key)

        # 4. score every model's last checkpoint on validation and test cases (original grid)
        eval_dir = run / "eval" / f"seed_{seed}"
        for name, sub in names.items():
            stage = f"seed_{seed}/eval_{name}"
            rows_file, masks_file = eval_dir / f"{name}.json", eval_dir / f"{name}_overlay_masks.npz"
            if stages.get(stage) == "done" and rows_file.is_file() and masks_file.is_file():
                model_rows = json.loads(rows_file.read_text())
                with np.load(masks_file) as npz:
                    masks = {k: npz[k] for k in npz.files}
            else:
                t0 = time.perf_counter()
                log.info("== evaluate %s (seed %d) on %d validation and %d test cases", name, seed,
                         len(split.val), len(test_ids))
                ckpt = RunFolder(seed_dir / sub).last
                val_rows, _ = evaluate_model(ckpt, cache, list(split.val), gt_paths, ctx)
                test_rows, masks = evaluate_model(ckpt, test_source, test_ids, test_gt, ctx, overlay_ids)
                model_rows = ([{"part": "val", **r} for r in val_rows] + [{"part": "test", **r} for r in test_rows])
                model_rows = [{"seed": int(seed), "model": name, **r} for r in model_rows]
                if ctx.is_main:
                    from kidneyssl.io.atomic import atomic_save

                    atomic_write_json(rows_file, model_rows)
                    def save_masks(path: Path, m: dict[str, np.ndarray] = masks) -> None:
                        np.savez_compressed(path, **m)  # type: ignore[arg-type]  # numpy's stub: **arrays

                    atomic_save(masks_file, save_masks, suffix=".npz")
                mark(stage, time.perf_counter() - t0)
            rows.extend(model_rows)
            if seed == first_seed:
                overlay_masks[name] = masks

    # 5. report
    report_path = run / "report" / "report.md"
    differences: dict[str, Any] = {}
    if ctx.is_main:
        t0 = time.perf_counter()
        overlays = []
        for cid in overlay_ids:
            case = overlay_source.load(cid, mmap=True)
            if case.label is None:
                continue
            overlays.append(OverlayCase(cid, np.asarray(case.image), np.asarray(case.label) > 0,
                                        {name: overlay_masks[name][cid] for name in names
                                         if cid in overlay_masks.get(name, {})}))
        split_info = {"train": len(split.train), "val": len(split.val), "test": len(test_ids),
                      "test_source": str(test_data) if test_data is not None else "held out of the dataset"}
        report_path, differences = write_experiment_report(
            run / "report", rows, histories, proxy_histories, overlays, config_to_dict(cfg),
            timings=dict(timings), split=split_info, unlabeled=unlabeled_reports or None)
        mark("report", time.perf_counter() - t0)
    from kidneyssl.metrics import summarize

    summary = {f"{name}/{part}": summarize([r for r in rows if r["model"] == name and r["part"] == part])
               for name in names for part in ("val", "test")}
    final = {name: float(np.mean([h[-1]["val_dice"] for h in histories[name].values() if h]))
             for name in names}
    return ExperimentResult(run, Path(report_path), final, summary, dict(timings), differences)


def run_demo(out_dir: str | Path, cfg: ExperimentConfig, *, force: bool = False,
             device: str = "auto") -> ExperimentResult | None:
    """Synthesise ``cfg.synth`` phantoms into ``out_dir/data`` (once) and run the experiment in
    ``out_dir/run``. ``cfg.synth`` keys: ``cases``, ``seed``, ``resolution`` (``demo``/``full``)."""
    import os

    from kidneyssl.phantoms import write_dataset

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
