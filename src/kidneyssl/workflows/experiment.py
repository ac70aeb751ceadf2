"""The paper's experiment (section 3.3), widened to the question researchers ask: prepare, then for
every seed pretrain each method (the side proxy on either input, MAE, Models Genesis), fine-tune one
model per method and one from scratch (MwoS) with identical settings, seed and split, score every
model with the one inference procedure on the validation and the held-out test cases, and report.

Experiment folder::

    RUN/experiment.json                stage status, wall time and device-seconds per stage
    RUN/config.yaml                    resolved config
    RUN/split.json                     train / validation / test case ids (shared by every seed)
    RUN/cache/, RUN/test_cache/        prepared caches (test_cache only with a separate test dataset)
    RUN/seed_S/pretrain_K/             pretraining run of seed S, method key K (region | masked for
                                       the side proxy's inputs, mae, genesis)
    RUN/seed_S/mws_K/, RUN/seed_S/mwos/   fine-tuned from pretrain_K/best.pt, and from scratch
    RUN/seed_S/pretrain_u/, mws_u/     with ``unlabeled``: the side proxy on the training cases plus
                                       the unlabeled scans as seed S's MwoS located them, and MwS+U
    RUN/seed_S/fXXX/...                with label budgets (``protocol.label_fractions`` /
                                       ``label_counts``): the same runs on a budget's cases
                                       (``f025`` = 25 %, ``n005`` = 5 cases; see below)
    RUN/eval/seed_S/<model>.json       per-case metrics on the original grid (validation and test)
    RUN/eval/seed_S/fXXX/<model>.json  the same for a label budget
    RUN/report/                        Table 1, paired differences, Fig. 4, Fig. 5, report.md/.html
    RUN/report/label_fractions.*       with label budgets: Dice against annotated cases, cases saved

The experiment is a list of :class:`Stage` values built once (:func:`build_stages`) and run by a
short loop; a stage's identity is its fields, and ``experiment.json`` marks each one done by its
key, so re-running the same command skips finished stages and resumes an interrupted one; adding
seeds or methods continues the same experiment with the new stages.

What it guarantees:

* The split (``protocol.split_seed``) is made once. Training and pretraining read only its
  training cases; pretraining holds out a part of them for its own validation and ``best.pt``
  (:func:`kidneyssl.training.tasks.pretraining.proxy_split`). Fine-tuning refuses a pretrained
  checkpoint that touched a validation or test case.
* Every model is scored with its LAST checkpoint (the end of training, as in the paper's Table 1):
  nothing is selected on validation data, and test cases are scored once, at the end.
* Scoring calls :func:`kidneyssl.inference.segment.segment_image` with the cached image and its
  preprocessing record only (no label, no label-derived plane): the same function, and so the
  same masks, as ``kidneyssl predict``. The label is read by the metric alone.
* With scans without masks (``unlabeled``), **MwS+U** is the side proxy (first side input) pretrained
  on the training cases plus the unlabeled scans whose kidneys seed S's MwoS located (trained on the
  training cases only, so the locator never saw a validation or test case).

Label budgets (issue 22). With ``protocol.label_fractions`` / ``label_counts`` every model is also
trained on nested subsets of the training cases (:mod:`kidneyssl.training.label_budget`: drawn per
seed, balanced by number of kidneys, recorded in ``split.json``), with the same settings; the
validation and test cases stay those of the split, and the full training set keeps today's
folders and keys (``seed_S/mwos``), so an experiment can be continued with budgets. What a budget
means for pretraining:

* a method that reads no label (:attr:`~kidneyssl.training.tasks.base.Task.reads_labels` False:
  MAE, Models Genesis) pretrains ONCE per seed on all training images (``seed_S/pretrain_K``) and
  is fine-tuned from there on each budget;
* a method that reads masks (the side proxy) pretrains once per budget and may read the masks of
  that budget's cases only. For the side proxy the other training images join its training pairs
  as located scans (``seed_S/fXXX/training_scans/``: links to the dataset's images, never copies),
  located by that budget's own scratch model, so the order within a budget is scratch -> side
  pretraining (locator: ``fXXX/mwos/last.pt``) -> side fine-tuning. With 2 or 3 annotated cases
  2 validate the proxy and the training pairs come from the rest and the located scans
  (:func:`~kidneyssl.training.tasks.pretraining.proxy_split`); 1 is refused.

Every checkpoint records the labels it read (``labels_read``), so no label outside a budget can
reach a model of that budget unseen. ``experiment.json`` records each stage's wall time and
device-seconds (``compute``); the label-fraction report sets pretraining cost beside the
annotated cases saved (:mod:`kidneyssl.reporting.label_fractions`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kidneyssl.config import PROXY_INPUTS, ExperimentConfig, config_to_dict, save_config
from kidneyssl.data.cache import Cache
from kidneyssl.errors import KidneySSLError, RunFolderError
from kidneyssl.io.atomic import atomic_write_json
from kidneyssl.training.distributed import (
    DistContext,
    broadcast_object,
    decided_by_rank0,
    gather_objects,
    init_distributed,
    shard,
)
from kidneyssl.training.label_budget import LabelBudget
from kidneyssl.training.plan import PlanOptions, StagePlan, announce_plan, estimate_stage, remaining_after
from kidneyssl.training.split import Split

__all__ = ["ExperimentResult", "Method", "Stage", "run_experiment", "with_network_pad_multiple", "evaluate_model",
           "model_names", "seed_config", "experiment_methods", "build_stages", "check_budgets", "run_demo",
           "SCRATCH_MODEL"]

log = logging.getLogger(__name__)

N_OVERLAY_CASES = 3
#: Protocol keys that only add runs or change the report; an experiment may be continued with
#: other values of these.
_EXTENDABLE = ("seeds", "proxy_variants", "methods", "min_seeds_for_verdict", "min_cases_for_verdict",
               "label_fractions", "label_counts")
#: The model trained from scratch, and its run folder.
SCRATCH_MODEL, SCRATCH_RUN = "MwoS", "mwos"
#: The side proxy pretrained with located unlabeled scans: its model, pretraining key and folder.
UNLABELED_MODEL, UNLABELED_KEY = "MwS+U", "u"
#: A label budget's folder of links to the images of the training cases outside it.
BUDGET_SCANS = "training_scans"


@dataclass(frozen=True)
class ExperimentResult:
    """Paths and headline numbers of a finished experiment."""

    run_dir: Path
    report: Path
    final_val_dice: dict[str, float]
    summary: dict[str, Any]
    timings: dict[str, float]
    differences: dict[str, Any] = dataclasses.field(default_factory=dict)
    label_fractions: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class Method:
    """A pretraining method as the experiment compares it.

    Attributes:
        name: as the protocol names it (``side-region``, ``mae``).
        method: the registered pretraining method (``side``, ``mae``).
        key: its pretraining stage and folder key (``region``, ``mae``).
        model: the report's name of the model fine-tuned from it (``MwS-region``, ``MAE``).
        proxy_input: the side proxy's input (``region``/``masked``), else None.
        reads_labels: whether its pretraining reads masks (the task's ``reads_labels``).
    """

    name: str
    method: str
    key: str
    model: str
    proxy_input: str | None = None
    reads_labels: bool = True


def experiment_methods(cfg: ExperimentConfig) -> list[Method]:
    """The methods of ``cfg.protocol`` (``methods``, or ``side-<v>`` per proxy variant).

    Raises:
        KidneySSLError: an unknown method (the message lists the known ones).
    """
    from kidneyssl.training.tasks.registry import PRETRAINING_METHODS, pretraining_class

    side_reads = bool(pretraining_class("side").reads_labels)
    known: dict[str, Method] = {f"side-{v}": Method(f"side-{v}", "side", v, f"MwS-{v}", v, side_reads)
                                for v in PROXY_INPUTS}
    for name in PRETRAINING_METHODS:
        if name != "side":
            cls = pretraining_class(name)
            known[name] = Method(name, name, name, str(getattr(cls, "display_name", name)),
                                 reads_labels=bool(cls.reads_labels))
    names = cfg.protocol.methods or tuple(f"side-{v}" for v in cfg.protocol.proxy_variants)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise KidneySSLError(f"unknown method(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in names]


def seed_config(cfg: ExperimentConfig, seed: int, proxy_input: str | None = None) -> ExperimentConfig:
    """``cfg`` for one seed's runs (``pretrain.seed = train.seed = seed``) and proxy input."""
    pretrain = dataclasses.replace(cfg.pretrain, seed=int(seed),
                                   proxy_input=proxy_input or cfg.pretrain.proxy_input)
    return dataclasses.replace(cfg, pretrain=pretrain, train=dataclasses.replace(cfg.train, seed=int(seed)))


def model_names(cfg: ExperimentConfig, unlabeled: bool = False) -> dict[str, str]:
    """Model name -> run sub-folder name, in the order they are trained: one per method, MwoS,
    then (with ``unlabeled``) MwS+U."""
    names = {m.model: f"mws_{m.key}" for m in experiment_methods(cfg)}
    names[SCRATCH_MODEL] = SCRATCH_RUN
    if unlabeled:
        names[UNLABELED_MODEL] = f"mws_{UNLABELED_KEY}"
    return names


@dataclass(frozen=True)
class Stage:
    """One stage of the experiment.

    Attributes:
        kind: ``pretrain`` (a pretraining run), ``train`` (a fine-tuned or scratch model), ``eval``
            (scoring a model's last checkpoint).
        seed: the seed.
        name: the pretraining key (``region``, ``mae``, ``u``) or the model (``MwoS``, ``MAE``).
        folder: the run folder (``eval``: the scored model's).
        method: the pretraining method run (``pretrain``) or started from (``train``), None for
            scratch.
        init: ``train``: the pretraining run folder it starts from (its ``best.pt``).
        unlabeled: the MwS+U branch (located unlabeled scans).
        budget: the label budget (None: every training case, the experiment without budgets).
        locator: a budget's pretraining that locates the other training images: the run folder
            of the segmentation model that locates them (its ``last.pt``).
    """

    kind: str
    seed: int
    name: str
    folder: Path
    method: Method | None = None
    init: Path | None = None
    unlabeled: bool = False
    budget: LabelBudget | None = None
    locator: Path | None = None

    @property
    def key(self) -> str:
        """The stage's key in ``experiment.json`` (and the name its plan and logs show)."""
        where = f"seed_{self.seed}/" + (f"{self.budget.folder}/" if self.budget is not None else "")
        return f"{where}{self.kind}_{self.name}"

    def config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """The stage's config: the seed's, with the side proxy's input where it has one."""
        return seed_config(cfg, self.seed, self.method.proxy_input if self.method else None)


def build_stages(cfg: ExperimentConfig, run: Path, unlabeled: bool = False,
                 budgets: Sequence[LabelBudget] = ()) -> list[Stage]:
    """Every stage of the experiment, in the order they run: per seed, pretraining per method,
    fine-tuning per method and from scratch, then (``unlabeled``) the side proxy with the scans
    MwoS located and MwS+U, then scoring of every model; then per label budget (fewest cases
    first): scratch, each method (pretraining on the budget first for a method that reads labels,
    located by the budget's scratch model), and their scoring (see the module docstring)."""
    methods = experiment_methods(cfg)
    stages: list[Stage] = []
    for seed in cfg.protocol.seeds:
        seed_dir = run / f"seed_{seed}"
        pre = {m.key: Stage("pretrain", seed, m.key, seed_dir / f"pretrain_{m.key}", m) for m in methods}
        trains = [Stage("train", seed, m.model, seed_dir / f"mws_{m.key}", m, pre[m.key].folder) for m in methods]
        trains.append(Stage("train", seed, SCRATCH_MODEL, seed_dir / SCRATCH_RUN))
        stages += list(pre.values()) + trains
        if unlabeled:
            side = next((m for m in methods if m.method == "side"), None)
            if side is None:
                raise KidneySSLError("unlabeled scans add MwS+U, the side proxy with located scans: include a "
                                     "side-<input> method")
            u = Stage("pretrain", seed, UNLABELED_KEY, seed_dir / f"pretrain_{UNLABELED_KEY}", side, unlabeled=True)
            stages += [u, Stage("train", seed, UNLABELED_MODEL, seed_dir / f"mws_{UNLABELED_KEY}", side, u.folder,
                                unlabeled=True)]
        stages += [Stage("eval", seed, s.name, s.folder, s.method) for s in stages
                   if s.kind == "train" and s.seed == seed]
        for budget in budgets:
            where = seed_dir / budget.folder
            scratch = Stage("train", seed, SCRATCH_MODEL, where / SCRATCH_RUN, budget=budget)
            here = [scratch]
            for m in methods:
                if m.reads_labels:  # pretrained on this budget's labels (and, side, its located images)
                    p = Stage("pretrain", seed, m.key, where / f"pretrain_{m.key}", m, budget=budget,
                              locator=scratch.folder if m.method == "side" else None)
                    here += [p, Stage("train", seed, m.model, where / f"mws_{m.key}", m, p.folder, budget=budget)]
                else:  # image-only: the seed's one pretraining on all training images
                    here.append(Stage("train", seed, m.model, where / f"mws_{m.key}", m, pre[m.key].folder,
                                      budget=budget))
            stages += here + [Stage("eval", seed, s.name, s.folder, s.method, budget=budget)
                              for s in here if s.kind == "train"]
    return stages


def check_budgets(cfg: ExperimentConfig, budgets: Sequence[LabelBudget]) -> None:
    """Refuse label budgets the methods cannot run on, before anything is trained.

    Raises:
        KidneySSLError: a budget below 2 cases for the side proxy (its validation needs two
            annotated patients) or below 4 for another method that reads labels; or
            ``pretrain.select_by=probe_dice`` for an image-only method, whose one pretraining per
            seed serves every budget and would be chosen on labels outside the smaller ones.
    """
    if not budgets:
        return
    smallest = min(b.cases for b in budgets)
    for m in experiment_methods(cfg):
        need = 2 if m.method == "side" else 4
        if m.reads_labels and smallest < need:
            raise KidneySSLError(f"the {m.name} pretraining reads masks and needs at least {need} annotated cases; "
                                 f"the smallest label budget has {smallest}")
        if not m.reads_labels and cfg.pretrain.select_by == "probe_dice":
            raise KidneySSLError(f"pretrain.select_by=probe_dice with label budgets: {m.name} pretrains once per "
                                 "seed for every budget, and choosing its checkpoint on the probe would read labels "
                                 "outside the smaller budgets; choose by val_loss")


# -- the experiment's folder and state ------------------------------------------------------------
def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """The config of an experiment as far as continuing it must keep it: read back (so fields added
    since it was saved take their defaults), without the keys that only add runs."""
    from kidneyssl.config import ConfigError, config_from_dict

    try:
        cfg_dict = config_to_dict(config_from_dict(ExperimentConfig, cfg_dict))
    except (ConfigError, TypeError):
        pass  # an unreadable config stays as it is: it differs
    out = json.loads(json.dumps(cfg_dict))
    for key in _EXTENDABLE:
        out.get("protocol", {}).pop(key, None)
    return out


def _read_state(run: Path, cfg: ExperimentConfig, force: bool) -> dict[str, Any]:
    """The experiment's saved state, after checking the folder may hold this experiment."""
    state_file = run / "experiment.json"
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
                "continue it (more seeds or methods are fine), start over, or choose another output "
                "folder", remedy=("force", "out"))
        return state
    from kidneyssl.training.lock import LOCK_NAME

    if run.is_dir() and any(p.name != LOCK_NAME for p in run.iterdir()):  # our own lock is taken first
        raise RunFolderError(f"{run}: output folder is not empty and holds no experiment; replace its "
                             "contents or choose another output folder", remedy=("force", "out"))
    return {}


def _claim(run: Path, cfg: ExperimentConfig, force: bool, ctx: DistContext) -> dict[str, Any]:
    """Rank 0 reads and checks the folder; every rank gets its answer (or its error)."""
    return decided_by_rank0(lambda: _read_state(run, cfg, force), ctx)


def _stage_folder_args(folder: Path, kind: str, force_fresh: bool) -> dict[str, Any]:
    """resume/force flags that continue a stage folder in whatever state it is."""
    from kidneyssl.training.runfolder import RunFolder, run_kind

    rf = RunFolder(folder)
    if not force_fresh and run_kind(rf.info()) == kind and rf.last.is_file():
        return {"resume": True, "force": False}
    return {"resume": False, "force": True}


def evaluate_model(checkpoint: str | Path, cache: Cache, case_ids: Sequence[str], gt_paths: dict[str, Path],
                   ctx: DistContext, keep_masks: Sequence[str] = ()) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Per-case metrics of a segmentation checkpoint on ``case_ids``, on the ORIGINAL grid.

    Each case: :func:`kidneyssl.inference.segment.segment_image` on the cached image with its
    preprocessing record -- exactly what ``kidneyssl predict`` does with the original file -- then
    :func:`kidneyssl.metrics.compute_case_metrics` against the original segmentation (kidney = the
    cache's label policy, e.g. label > 0 for KiTS19) with the original spacing. The label is read
    here, after the prediction exists.

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


@dataclass
class _Inputs:
    """What every stage reads: the caches, the split and the ground-truth files."""

    cache_path: Path
    cache: Cache
    split: Split
    split_file: Path | None
    test_ids: list[str]
    test_source: Cache
    gt_paths: dict[str, Path]
    test_gt: dict[str, Path]
    image_paths: dict[str, Path] = dataclasses.field(default_factory=dict)
    budgets: list[LabelBudget] = dataclasses.field(default_factory=list)
    #: seed -> budget size -> that budget's training cases
    subsets: dict[int, dict[int, tuple[str, ...]]] = dataclasses.field(default_factory=dict)

    def budget_cases(self, stage: Stage) -> list[str] | None:
        """The training cases of ``stage``'s label budget (None: all)."""
        return None if stage.budget is None else list(self.subsets[stage.seed][stage.budget.cases])


def _task(stage: Stage, inputs: _Inputs, cfg: ExperimentConfig, unlabeled_dir: Path | None) -> Any:
    """The training task of a ``pretrain`` or ``train`` stage."""
    from kidneyssl.training.runfolder import RunFolder
    from kidneyssl.training.tasks.registry import pretraining_task
    from kidneyssl.training.tasks.segmentation import SegmentationTask

    split_file = inputs.split_file
    cases = inputs.budget_cases(stage)
    if stage.kind == "pretrain":
        assert stage.method is not None
        extra: dict[str, Any] = {}
        if stage.unlabeled:
            extra = {"unlabeled": unlabeled_dir, "locator": RunFolder(stage.folder.parent / SCRATCH_RUN).last}
        elif cases is not None:
            extra = {"label_cases": cases}
            if stage.locator is not None:
                extra.update(unlabeled=stage.folder.parent / BUDGET_SCANS, locator=RunFolder(stage.locator).last)
        return pretraining_task(stage.method.method, inputs.cache_path, split_file, **extra)
    parts = cfg.protocol.init_parts if stage.method is not None and stage.method.method != "side" else "encoder"
    init = str(stage.init / "best.pt") if stage.init is not None else "scratch"
    return SegmentationTask(inputs.cache_path, split_file, init=init, init_parts=parts, train_cases=cases)


def _link_budget_scans(stage: Stage, inputs: _Inputs, ctx: DistContext) -> None:
    """Rank 0 fills ``<budget folder>/training_scans/`` with one link per training case outside
    the stage's budget, to its image in the dataset (masks are never linked; images never copied)."""
    import os

    if ctx.is_main:
        budget_cases = set(inputs.budget_cases(stage) or ())
        wanted = {c: inputs.image_paths[c] for c in inputs.split.train if c not in budget_cases}
        folder = stage.folder.parent / BUDGET_SCANS
        folder.mkdir(parents=True, exist_ok=True)
        names = {}
        for cid, image in wanted.items():
            suffix = ".nii.gz" if image.name.endswith(".nii.gz") else image.suffix
            names[f"{cid}{suffix}"] = image.resolve()
        for child in folder.iterdir():
            if child.is_symlink() and (child.name not in names or Path(os.readlink(child)) != names[child.name]):
                child.unlink()
        for name, target in names.items():
            if not (folder / name).is_symlink():
                os.symlink(target, folder / name)
    broadcast_object(None, ctx)


def _plan(stages: Sequence[Stage], inputs: _Inputs, cfg: ExperimentConfig, ctx: DistContext,
          options: PlanOptions, unlabeled_dir: Path | None) -> list[StagePlan]:
    """The training stages still to run. Each stage's own cases and iterations per epoch (a label
    budget trains on fewer halves), with time estimates from one probe per kind of stage (a
    pretraining method's step, a segmentation step): a step costs the same for every seed and
    budget. Locating the unlabeled or a budget's other training images is not estimated."""
    from kidneyssl.training.trainer import training_precision

    probe = options.probe and options.announce and ctx.is_main
    timed: dict[tuple[str, str], StagePlan] = {}
    facts: dict[tuple[tuple[str, str], LabelBudget | None], StagePlan] = {}
    out = []
    for stage in stages:
        sig = (stage.kind, stage.method.method if stage.kind == "pretrain" and stage.method else "segmentation")
        key = (sig, stage.budget)
        if key not in facts:
            scfg = stage.config(cfg)
            task = _task(dataclasses.replace(stage, unlabeled=False), inputs, cfg, None)
            scfg = task.effective_config(scfg)
            task.setup(scfg, None, None, ctx)
            plan = estimate_stage(task, ctx, name=stage.key, probe=probe and sig not in timed,
                                  precision=training_precision(scfg, ctx.device))
            if sig in timed:
                known = timed[sig]
                plan = dataclasses.replace(plan, seconds_per_iteration=known.seconds_per_iteration,
                                           data_seconds_per_iteration=known.data_seconds_per_iteration,
                                           seconds_per_val_unit=known.seconds_per_val_unit)
            elif probe:
                timed[sig] = plan
            facts[key] = plan
        out.append(dataclasses.replace(facts[key], name=stage.key))
    return out


def _prepare_inputs(run: Path, cfg: ExperimentConfig, ctx: DistContext, data_dir: str | Path,
                    test_data: str | Path | None, cache_dir: str | Path | None, stages_done: dict[str, Any],
                    mark: Any, workers: int | None, data_format: str | None,
                    kidney_labels: tuple[int, ...] | None, dry_run: bool, scratch_root: Path | None = None) -> _Inputs:
    """Prepare the caches (rank 0; the others wait), make or read the split, find the ground truth.
    A dry run writes nothing into ``run``: caches it would prepare go to a temporary folder inside
    ``scratch_root`` (removed by the caller)."""
    from kidneyssl.data.cache import open_cache
    from kidneyssl.data.prepare import prepare_dataset
    from kidneyssl.io.datasets import open_dataset
    from kidneyssl.training.split import annotated_case_ids, load_split, make_split, save_split

    scratch = Path(tempfile.mkdtemp(prefix="kidneyssl-dry-run-", dir=scratch_root)) if dry_run else None
    cache_path = Path(cache_dir) if cache_dir else run / "cache"
    test_cache_path = run / "test_cache" if test_data is not None else None
    if scratch is not None:
        if not (cache_path / "cache.json").is_file():
            cache_path = scratch / "cache"
        if test_cache_path is not None and not (test_cache_path / "cache.json").is_file():
            test_cache_path = scratch / "test_cache"
    for stage, src, dst in (("prepare", data_dir, cache_path), ("prepare_test", test_data, test_cache_path)):
        if src is None or dst is None or (stages_done.get(stage) == "done" and (dst / "cache.json").is_file()):
            continue
        t0 = time.perf_counter()
        if ctx.is_main:
            log.info("== %s: %s -> %s", stage, src, dst)
            prepare_dataset(src, dst, cfg.preprocess, workers=workers or 2, data_format=data_format,
                            kidney_labels=kidney_labels)
        gather_objects(None, ctx)
        if not dry_run:
            mark(stage, time.perf_counter() - t0)
    cache = open_cache(cache_path, expected=cfg.preprocess)
    test_cache = open_cache(test_cache_path, expected=cfg.preprocess) if test_cache_path is not None else None
    split_path = run / "split.json"
    if split_path.is_file():
        split = load_split(split_path)
    else:
        test_fraction = 0.0 if test_cache is not None else cfg.protocol.test_fraction
        split = make_split(annotated_case_ids(cache), cfg.train.val_fraction, cfg.protocol.split_seed,
                           test_fraction=test_fraction)
        if ctx.is_main and not dry_run:
            save_split(split, split_path)
    gather_objects(None, ctx)
    dataset_cases = open_dataset(data_dir, data_format, kidney_labels).cases
    gt_paths = {c.case_id: c.segmentation for c in dataset_cases if c.segmentation is not None}
    image_paths = {c.case_id: c.imaging for c in dataset_cases if c.imaging is not None}
    if test_cache is not None:
        assert test_data is not None  # a test cache exists only for a test dataset
        test_ids, test_source = annotated_case_ids(test_cache), test_cache
        test_gt = {c.case_id: c.segmentation for c in open_dataset(test_data, data_format, kidney_labels).cases
                   if c.segmentation is not None}
    else:
        test_ids, test_source, test_gt = list(split.test), cache, gt_paths
    missing = [c for c in list(split.val) if c not in gt_paths] + [c for c in test_ids if c not in test_gt]
    if missing:
        raise KidneySSLError(f"no segmentation file for scored case(s) {missing[:5]}")
    if scratch is not None:  # the dry run's tasks plan on the experiment's split, kept out of the run folder
        split_path = scratch / "split.json"
        save_split(split, split_path)
    return _Inputs(cache_path, cache, split, split_path, test_ids, test_source, gt_paths, test_gt, image_paths)


def with_network_pad_multiple(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``preprocess.pad_multiple`` raised to a multiple of the network's input size
    multiple (nnU-Net's networks need 32 or more where the paper's needs 16): the experiment
    prepares its own cache, so it pads for the network it trains (logged when it changes)."""
    import math

    from kidneyssl.models.registry import build_network, network_spec

    multiple = int(build_network(network_spec(cfg.model)).size_multiple)
    pad = cfg.preprocess.pad_multiple
    if pad % multiple == 0:
        return cfg
    needed = math.lcm(pad, multiple)
    log.info("preprocess.pad_multiple %d -> %d: the %s network's input sizes are multiples of %d", pad, needed,
             cfg.model.architecture, multiple)
    return dataclasses.replace(cfg, preprocess=dataclasses.replace(cfg.preprocess, pad_multiple=needed))


def run_experiment(data_dir: str | Path, out_dir: str | Path, cfg: ExperimentConfig, *,
                   cache_dir: str | Path | None = None, test_data: str | Path | None = None,
                   force: bool = False, device: str = "auto", workers: int | None = None,
                   data_format: str | None = None, kidney_labels: tuple[int, ...] | None = None,
                   plan: PlanOptions | None = None, unlabeled: str | Path | None = None,
                   report_notes: Sequence[str] = ()) -> ExperimentResult | None:
    """Run (or continue) the whole experiment in ``out_dir``; see the module docstring.

    Args:
        data_dir: annotated dataset (KiTS19 layout) for training, validation and (by default) test.
        out_dir: experiment folder.
        cfg: resolved config (``cfg.protocol``: seeds, split seed, test fraction, methods).
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
            whole remaining experiment is planned (every stage, with a timed probe of each kind of
            step on the device) and printed; each stage's epoch lines then carry the experiment's
            ETA. With ``dry_run`` nothing is written into ``out_dir`` (caches the probe needs are
            prepared into a temporary folder), the plan is printed and ``None`` returned.
        unlabeled: scans without masks (any input ``kidneyssl locate`` reads, or a ``locate``
            output): adds MwS+U (see the module docstring). Kept in ``experiment.json``; a
            continued experiment uses the recorded folder.
        report_notes: sentences the report shows at the top of its result.

    Raises:
        DataError: ``test_data`` shares a case (id, file or content) with ``data_dir``.
        RunFolderError: the folder holds something else, or another live process runs an
            experiment in it.
    """
    options = plan or PlanOptions()
    cfg = with_network_pad_multiple(cfg)
    ctx = init_distributed(device)
    run = Path(out_dir)
    if test_data is not None:  # a test case that is also a training case would be scored on what it learnt
        from kidneyssl.io.datasets import check_disjoint_cases, open_dataset

        check_disjoint_cases(open_dataset(data_dir, data_format, kidney_labels),
                             open_dataset(test_data, data_format, kidney_labels))
    with contextlib.ExitStack() as stack:
        if options.dry_run:  # what the probe needs is prepared here and removed at the end
            scratch_root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kidneyssl-dry-run-")))
        else:
            scratch_root = None
            if ctx.is_main:  # one experiment per folder: a second one is refused while this one runs
                from kidneyssl.training.lock import RunLock

                run.mkdir(parents=True, exist_ok=True)
                stack.enter_context(RunLock(run))
        return _run_experiment(data_dir, run, cfg, ctx, options, cache_dir=cache_dir, test_data=test_data,
                               force=force, workers=workers, data_format=data_format,
                               kidney_labels=kidney_labels, unlabeled=unlabeled, scratch_root=scratch_root,
                               report_notes=report_notes)


def _run_experiment(data_dir: str | Path, run: Path, cfg: ExperimentConfig, ctx: DistContext, options: PlanOptions,
                    *, cache_dir: str | Path | None, test_data: str | Path | None, force: bool, workers: int | None,
                    data_format: str | None, kidney_labels: tuple[int, ...] | None, unlabeled: str | Path | None,
                    scratch_root: Path | None, report_notes: Sequence[str] = ()) -> ExperimentResult | None:
    """:func:`run_experiment` once the inputs are checked (and the folder locked, on rank 0)."""
    from kidneyssl.reporting.figures import refresh_history_plot
    from kidneyssl.training.plan import device_name
    from kidneyssl.training.runfolder import RunFolder
    from kidneyssl.training.trainer import fit

    state = _claim(run, cfg, force, ctx)
    fresh = not state
    done: dict[str, Any] = dict(state.get("stages", {}))
    if unlabeled is not None and state.get("unlabeled") and Path(unlabeled).resolve() != Path(state["unlabeled"]):
        raise RunFolderError(f"{run}: this experiment's unlabeled scans are {state['unlabeled']}, not "
                             f"{Path(unlabeled).resolve()}; start over or use another output folder",
                             remedy=("force", "out"))
    unlabeled_dir = Path(unlabeled).resolve() if unlabeled is not None else (
        Path(state["unlabeled"]) if state.get("unlabeled") else None)
    timings: dict[str, float] = dict(state.get("timings", {}))
    compute: dict[str, Any] = dict(state.get("compute", {}))
    cache_path_box: list[Path] = []

    def mark(stage: str, seconds: float) -> None:
        done[stage] = "done"
        timings[stage] = round(timings.get(stage, 0.0) + seconds, 1)
        compute[stage] = {"wall_seconds": timings[stage], "devices": ctx.world_size,
                          "device_seconds": round(timings[stage] * ctx.world_size, 1),
                          "device": device_name(ctx.device)}
        if ctx.is_main:
            atomic_write_json(run / "experiment.json", {
                "config": config_to_dict(cfg), "data": str(Path(data_dir).resolve()),
                "test_data": str(Path(test_data).resolve()) if test_data is not None else None,
                "cache": str(cache_path_box[0].resolve()) if cache_path_box else None, "stages": done,
                "timings": timings, "compute": compute,
                "unlabeled": str(unlabeled_dir) if unlabeled_dir is not None else None})

    if ctx.is_main and not options.dry_run:
        run.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run / "config.yaml")
    inputs = _prepare_inputs(run, cfg, ctx, data_dir, test_data, cache_dir, done, mark, workers, data_format,
                             kidney_labels, options.dry_run, scratch_root)
    cache_path_box.append(inputs.cache_path)
    split = inputs.split
    _label_budgets(inputs, cfg, run, ctx, options.dry_run)
    stages = build_stages(cfg, run, unlabeled=unlabeled_dir is not None, budgets=inputs.budgets)
    log.info("experiment: %d training, %d validation, %d test cases%s; seeds %s; methods %s%s",
             len(split.train), len(split.val), len(inputs.test_ids),
             f" (test from {test_data})" if test_data is not None else "", list(cfg.protocol.seeds),
             [m.name for m in experiment_methods(cfg)],
             f"; label budgets {[b.label for b in inputs.budgets]} and all" if inputs.budgets else "")

    pending = [s for s in stages if s.kind != "eval" and done.get(s.key) != "done"]
    stage_plans = _plan(pending, inputs, cfg, ctx, options, unlabeled_dir)
    if not announce_plan(stage_plans, options, ctx=ctx, cfg=cfg):
        return None
    quiet = dataclasses.replace(options, announce=False)

    rows: list[dict[str, Any]] = []
    names = model_names(cfg, unlabeled=unlabeled_dir is not None)
    histories: dict[str, dict[int, list[dict[str, Any]]]] = {name: {} for name in names}
    proxy_histories: dict[str, dict[int, list[dict[str, Any]]]] = {}
    pretrain_costs: dict[str, list[dict[str, Any]]] = {}
    unlabeled_reports: dict[int, dict[str, Any]] = {}
    overlay_masks: dict[str, dict[str, np.ndarray]] = {}
    overlay_ids = list(inputs.test_ids or split.val)[:N_OVERLAY_CASES]
    overlay_source = inputs.test_source if inputs.test_ids else inputs.cache
    first_seed = cfg.protocol.seeds[0]

    budget_rows: list[dict[str, Any]] = []
    for stage in stages:
        if stage.kind == "eval":
            model_rows, masks = _evaluate_stage(stage, inputs, run, ctx, done.get(stage.key) == "done",
                                                overlay_ids if stage.budget is None else (), mark)
            if stage.budget is not None:
                budget_rows.extend(model_rows)
                continue
            rows.extend(model_rows)
            if stage.seed == first_seed:
                overlay_masks[stage.name] = masks
            continue
        if done.get(stage.key) != "done":
            if stage.locator is not None:
                _link_budget_scans(stage, inputs, ctx)
            t0 = time.perf_counter()
            later = remaining_after(stage_plans, stage.key) if any(p.name == stage.key for p in stage_plans) else 0.0
            what = (f"{stage.method.name} pretraining" if stage.kind == "pretrain" and stage.method
                    else f"fine-tuned from {stage.init.relative_to(run)}" if stage.init else "from scratch")
            how = (", + unlabeled scans located by this seed's MwoS" if stage.unlabeled
                   else f", label budget {stage.budget.label}" if stage.budget is not None else "")
            log.info("== %s (%s%s): %s", stage.key, what, how, stage.folder)
            fit(_task(stage, inputs, cfg, unlabeled_dir), stage.folder, stage.config(cfg), ctx=ctx,
                plan=dataclasses.replace(quiet, stage_name=stage.key, later_seconds=later),
                on_epoch=refresh_history_plot,
                **_stage_folder_args(stage.folder, "pretrain" if stage.kind == "pretrain" else "segmentation", fresh))
            mark(stage.key, time.perf_counter() - t0)
        if stage.budget is not None:  # the report's curves and tables are of the full training set
            continue
        history = RunFolder(stage.folder).read_history()
        if stage.kind == "train":
            histories[stage.name][stage.seed] = history
        else:
            assert stage.method is not None
            label = f"{stage.method.name}+U" if stage.unlabeled else stage.method.name
            proxy_histories.setdefault(label, {})[stage.seed] = history
            pretrain_costs.setdefault(label, []).append({**(history[-1] if history else {}),
                                                        **compute.get(stage.key, {})})
            if stage.unlabeled:
                unlabeled_reports[stage.seed] = (RunFolder(stage.folder).info() or {}).get("unlabeled", {})

    # the report (rank 0)
    report_path = run / "report" / "report.md"
    differences: dict[str, Any] = {}
    fractions: dict[str, Any] = {}
    if ctx.is_main:
        from kidneyssl.reporting.figures import OverlayCase
        from kidneyssl.reporting.report import write_experiment_report

        t0 = time.perf_counter()
        overlays = []
        for cid in overlay_ids:
            case = overlay_source.load(cid, mmap=True)
            if case.label is None:
                continue
            overlays.append(OverlayCase(cid, np.asarray(case.image), np.asarray(case.label) > 0,
                                        {name: overlay_masks[name][cid] for name in names
                                         if cid in overlay_masks.get(name, {})}))
        split_info = {"train": len(split.train), "val": len(split.val), "test": len(inputs.test_ids),
                      "test_source": str(test_data) if test_data is not None else "held out of the dataset"}
        report_path, differences = write_experiment_report(
            run / "report", rows, histories, proxy_histories, overlays, config_to_dict(cfg),
            timings=dict(timings), split=split_info, unlabeled=unlabeled_reports or None, notes=report_notes,
            budgets=_budgets(pretrain_costs), compute=dict(compute))
        if inputs.budgets:
            fractions = _label_fraction_report(run, cfg, stages, inputs, rows, budget_rows, compute)
        mark("report", time.perf_counter() - t0)
    from kidneyssl.metrics import summarize

    summary = {f"{name}/{part}": summarize([r for r in rows if r["model"] == name and r["part"] == part])
               for name in names for part in ("val", "test")}
    final = {name: float(np.mean([h[-1]["val_dice"] for h in histories[name].values() if h]))
             for name in names if histories[name]}
    return ExperimentResult(run, Path(report_path), final, summary, dict(timings), differences, fractions)


def _label_budgets(inputs: _Inputs, cfg: ExperimentConfig, run: Path, ctx: DistContext, dry_run: bool) -> None:
    """Resolve the label budgets, draw each seed's nested subsets into ``inputs`` and record them
    in ``split.json`` (rank 0; not on a dry run)."""
    from kidneyssl.io.atomic import atomic_write_json
    from kidneyssl.training.label_budget import kidney_counts, label_subsets, resolve_budgets, subsets_record

    p = cfg.protocol
    budgets = resolve_budgets(p.label_fractions, p.label_counts, len(inputs.split.train))
    check_budgets(cfg, budgets)
    inputs.budgets = budgets
    if not budgets:
        return
    groups = kidney_counts(inputs.cache, inputs.split.train)
    inputs.subsets = {int(seed): label_subsets(inputs.split.train, groups, budgets, p.split_seed, int(seed))
                      for seed in p.seeds}
    if ctx.is_main and not dry_run and inputs.split_file is not None:
        record = json.loads(Path(inputs.split_file).read_text())
        record["label_budgets"] = subsets_record(inputs.subsets, budgets, groups, p.split_seed)
        atomic_write_json(Path(inputs.split_file), record)
    broadcast_object(None, ctx)


def _label_fraction_report(run: Path, cfg: ExperimentConfig, stages: Sequence[Stage], inputs: _Inputs,
                           rows: Sequence[dict[str, Any]], budget_rows: Sequence[dict[str, Any]],
                           compute: dict[str, Any]) -> dict[str, Any]:
    """The label-fraction report (:mod:`kidneyssl.reporting.label_fractions`) from the scored rows
    and each stage's device-seconds."""
    from kidneyssl.reporting.label_fractions import write_label_fraction_report

    n_train = len(inputs.split.train)
    all_rows = [{**r, "annotated_cases": n_train} for r in rows if r["model"] != UNLABELED_MODEL] + list(budget_rows)
    methods = experiment_methods(cfg)
    # the device-seconds of each (model, annotated cases, seed): its pretraining and its fine-tuning
    cost: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for stage in stages:
        if stage.kind != "train" or stage.unlabeled:
            continue
        n = stage.budget.cases if stage.budget is not None else n_train
        entry = {"finetune": compute.get(stage.key, {}), "pretrain": {}, "pretrain_stage": None}
        if stage.init is not None:
            pre = next(s for s in stages if s.kind == "pretrain" and s.folder == stage.init)
            entry.update(pretrain=compute.get(pre.key, {}), pretrain_stage=pre.key)
        cost.setdefault(stage.name, {}).setdefault(n, {})[stage.seed] = entry
    budgets = {b.cases: b.label for b in inputs.budgets}
    budgets[n_train] = f"all ({n_train} cases)"
    shared = [m.model for m in methods if not m.reads_labels]
    _, result = write_label_fraction_report(
        run / "report", all_rows, scratch=SCRATCH_MODEL, models=[m.model for m in methods], budgets=budgets,
        cost=cost, shared_pretraining=shared, config=config_to_dict(cfg))
    return result


def _budgets(rows: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:  # pretraining costs
    """Each pretraining method's budget over its seeds: mean optimiser steps, samples seen and
    device-seconds, from the last history row and ``experiment.json``'s compute record."""
    out = {}
    for label, entries in rows.items():
        def mean(key: str, entries: list[dict[str, Any]] = entries) -> float:
            values = [float(e[key]) for e in entries if key in e]
            return float(np.mean(values)) if values else float("nan")

        out[label] = {"optimizer_steps": mean("optimizer_steps"), "samples_seen": mean("samples_seen"),
                      "device_seconds": mean("device_seconds"), "seeds": len(entries),
                      "device": ", ".join(sorted({str(e["device"]) for e in entries if "device" in e})) or "?"}
    return out


def _evaluate_stage(stage: Stage, inputs: _Inputs, run: Path, ctx: DistContext, is_done: bool,
                    overlay_ids: Sequence[str], mark: Any) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """Score a model's last checkpoint on the validation and test cases (original grid), or read
    the scores of an earlier run of this stage."""
    from kidneyssl.io.atomic import atomic_save
    from kidneyssl.training.runfolder import RunFolder

    eval_dir = run / "eval" / f"seed_{stage.seed}"
    if stage.budget is not None:
        eval_dir = eval_dir / stage.budget.folder
    rows_file, masks_file = eval_dir / f"{stage.name}.json", eval_dir / f"{stage.name}_overlay_masks.npz"
    if is_done and rows_file.is_file() and masks_file.is_file():
        with np.load(masks_file) as npz:
            return json.loads(rows_file.read_text()), {k: npz[k] for k in npz.files}
    t0 = time.perf_counter()
    log.info("== evaluate %s (seed %d%s) on %d validation and %d test cases", stage.name, stage.seed,
             f", label budget {stage.budget.label}" if stage.budget is not None else "", len(inputs.split.val),
             len(inputs.test_ids))
    ckpt = RunFolder(stage.folder).last
    val_rows, _ = evaluate_model(ckpt, inputs.cache, list(inputs.split.val), inputs.gt_paths, ctx)
    test_rows, masks = evaluate_model(ckpt, inputs.test_source, inputs.test_ids, inputs.test_gt, ctx, overlay_ids)
    model_rows = [{"part": "val", **r} for r in val_rows] + [{"part": "test", **r} for r in test_rows]
    budget = ({"label_budget": stage.budget.folder, "annotated_cases": stage.budget.cases}
              if stage.budget is not None else {})
    model_rows = [{"seed": int(stage.seed), "model": stage.name, **budget, **r} for r in model_rows]
    if ctx.is_main:
        atomic_write_json(rows_file, model_rows)

        def save_masks(path: Path, m: dict[str, np.ndarray] = masks) -> None:
            np.savez_compressed(path, **m)  # type: ignore[arg-type]  # numpy's stub: **arrays

        atomic_save(masks_file, save_masks, suffix=".npz")
    mark(stage.key, time.perf_counter() - t0)
    return model_rows, masks


def run_demo(out_dir: str | Path, cfg: ExperimentConfig, *, force: bool = False,
             device: str = "auto", report_notes: Sequence[str] = ()) -> ExperimentResult | None:
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
    return run_experiment(data, out / "run", cfg, force=force, device=device, report_notes=report_notes)
