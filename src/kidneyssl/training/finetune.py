"""Segmentation training (paper, sections 3.1 and 3.3): MwS (encoder from the siamese network) or
MwoS (from scratch) on half volumes, batch size 1.

Loss per item: ``w_bce * BCE + w_dice * SoftDice + recon_weight * MSE(reconstruction, image)``,
``(w_bce, w_dice)`` moving linearly from ``(0.6, 0.4)`` at the first epoch to the configured end at
the last. Adam (lr 1e-3, weight decay 1e-2). With ``recon_weight == 0`` the reconstruction branch is
not built at all, so every parameter gets a gradient (DDP requires it).

Validation Dice per epoch is computed on WHOLE volumes: the validation case's cached preprocessed
image goes through :func:`kidneyssl.inference.segment.segment_image` (exactly what ``predict`` and
Table 1 do: image-derived split plane, halves, post-processing) and the mask is compared with the
cached label on the preprocessed grid. Validation Dice is monitoring (Fig. 5) and feeds ``best.pt``;
the experiment scores each model's LAST checkpoint, so nothing is selected on validation data.
Cases are sharded over ranks and gathered once per epoch.

MwS refuses a siamese checkpoint that touched a validation or test case of its split
(:func:`kidneyssl.training.split.check_touched_cases`), unless explicitly allowed (recorded in ``run.json``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from kidneyssl.config import ExperimentConfig, config_to_dict
from kidneyssl.data.cache import Cache, CaseSource
from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.inference.sliding_window import context_voxels
from kidneyssl.io.checkpoint import load_checkpoint, save_checkpoint
from kidneyssl.training.distributed import (
    DistContext,
    broadcast_object,
    gather_objects,
    init_distributed,
    shard,
    unwrap,
    wrap_ddp,
)
from kidneyssl.training.loop import build_grad_scaler, build_optimizer, epoch_order, train_one_epoch
from kidneyssl.training.plan import PlanOptions
from kidneyssl.training.runfolder import RunFolder, begin_run
from kidneyssl.training.seeding import capture_rng_state, restore_rng_state, seed_everything
from kidneyssl.training.split import Split, check_touched_cases, load_split, make_split

#: ``(run folder, history rows so far) -> None``, called after every epoch (rank 0).
EpochHook = Callable[[Path, list[dict[str, Any]]], None]

__all__ = ["EpochHook", "TrainResult", "train_segmentation", "validate_segmentation", "annotated_case_ids",
           "resolve_split", "effective_config", "resolve_pos_weight"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    """Where a segmentation run ended."""

    run_dir: Path
    best_epoch: int
    best_dice: float
    last_dice: float
    history: list[dict[str, Any]]


def effective_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` with ``model.reconstruction`` off when ``train.recon_weight`` is 0 (branch not built)."""
    if cfg.train.recon_weight == 0 and cfg.model.reconstruction:
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, reconstruction=False))
    return cfg


def annotated_case_ids(cache: Cache) -> list[str]:
    """Case ids of the cache that have a label (only those can be trained or validated on)."""
    ids = []
    for cid in cache.case_ids:
        if cache.load(cid, mmap=True).label is not None:
            ids.append(cid)
    return ids


def resolve_split(cache: Cache, cfg: ExperimentConfig, split_file: str | Path | None) -> Split:
    """The split: from ``split_file`` when given, else derived from (case ids, val_fraction, seed).

    Raises:
        KidneySSLError: empty dataset, fewer than 2 validation cases, unknown case ids.
    """
    ids = annotated_case_ids(cache)
    if not ids:
        raise KidneySSLError(f"{getattr(cache, 'root', 'cache')}: no annotated cases: nothing to train on")
    if split_file is not None:
        return load_split(split_file, available=ids)
    return make_split(ids, cfg.train.val_fraction, cfg.train.seed)


def validate_segmentation(model: Any, cache: CaseSource, case_ids: Sequence[str], cfg: ExperimentConfig,
                          ctx: DistContext) -> dict[str, float]:
    """Dice per validation case on the whole volume (preprocessed grid).

    Each case goes through :func:`kidneyssl.inference.segment.segment_image`, the inference that
    ``predict`` and Table 1 use, given only the cached image and its record; the label is read
    afterwards, by the metric alone. Each rank evaluates the cases with index
    ``i % world_size == rank``; results are gathered with one collective, so uneven counts cannot
    hang. Returns ``{case_id: dice}`` on every rank.
    """
    from kidneyssl.inference.segment import segment_image
    from kidneyssl.metrics import dice

    net = unwrap(model)
    was_training = net.training
    net.eval()
    mine: dict[str, float] = {}
    try:
        for cid in shard(list(case_ids), ctx):
            case = cache.load(cid, mmap=True)
            seg = segment_image(net, case.image, cfg, spacing_mm=case.record.spacing_mm, device=ctx.device)
            mine[cid] = float(dice(seg.mask, np.asarray(case.label) > 0))
    finally:
        net.train(was_training)
    merged: dict[str, float] = {}
    for part in gather_objects(mine, ctx):
        merged.update(part)
    return {cid: merged[cid] for cid in case_ids}


def _load_init(model: Any, init: str, cfg: ExperimentConfig, split: Split,
               allow_overlap: bool) -> dict[str, Any]:
    """Load the encoder of a siamese checkpoint into ``model`` (MwS), after checking that the
    siamese run never touched a validation or test case of ``split``.

    Raises:
        CheckpointError: not a siamese checkpoint, it touched held-out cases, or its encoder does
            not fit ``cfg.model``.
    """
    from kidneyssl.models.transfer import load_encoder

    ckpt = load_checkpoint(init, kind="siamese")
    touched = ckpt.get("touched_cases")
    overlap = check_touched_cases(init, touched, split, allow_overlap)
    try:
        report = load_encoder(model, ckpt["model_state"])
    except CheckpointError as err:
        raise CheckpointError(
            f"{init}: its encoder does not fit this model (checkpoint model "
            f"{ckpt['config'].get('model')}; this run {config_to_dict(cfg.model)}): {err}"
        ) from err
    if report.missing:
        raise CheckpointError(f"{init}: encoder tensors missing from the checkpoint: {list(report.missing)[:3]}")
    return {"loaded": len(report.loaded), "missing": list(report.missing),
            "unexpected": list(report.unexpected), "held_out_cases_touched": overlap,
            "touched_cases": list(touched or []),
            "proxy_input": ckpt["config"].get("pretrain", {}).get("proxy_input", "unknown")}


def resolve_pos_weight(cfg: ExperimentConfig, dataset: Any) -> float:
    """The BCE positive-class weight: ``cfg.train.pos_weight``, or for ``auto``
    ``sqrt((1 - f) / f)`` with ``f`` the training halves' kidney-voxel fraction (see
    :class:`kidneyssl.config.SegTrainConfig`)."""
    from kidneyssl.data.segmentation import foreground_fraction

    if not isinstance(cfg.train.pos_weight, str):
        return float(cfg.train.pos_weight)
    fraction = foreground_fraction(dataset)
    if not 0.0 < fraction < 1.0:
        raise KidneySSLError(f"the training halves hold {fraction:.3%} kidney voxels: cannot weight the "
                             "BCE automatically; set train.pos_weight to a number")
    return float(np.sqrt((1.0 - fraction) / fraction))


def _segmentation_loss(cfg: ExperimentConfig, epoch: int, device: Any, pos_weight: float):
    """``(model, item) -> (loss, parts, 1)`` for one half volume (batch size 1)."""
    from kidneyssl.losses import BCEDiceLoss, segmentation_loss

    criterion = BCEDiceLoss(pos_weight=pos_weight).to(device)

    # Training stays in the default (contiguous) layout on every device. On the CPU channels-last
    # was ~5 % faster at 64x128x64, but at the paper's 128x256x144 halves oneDNN falls back to its
    # reference kernel for the 64->16 full-resolution conv's weight gradient there: a step took
    # over 4 minutes instead of 80 s (benchmarks/bench_training.py --layout).
    def compute(model: Any, item: dict[str, Any]) -> tuple[Any, dict[str, float], int]:
        image = item["image"][None].to(device, non_blocking=True)
        label = item["label"][None].to(device, non_blocking=True)
        out = model(image)
        if out.reconstruction is not None:
            out = type(out)(out.logits.float(), out.reconstruction.float())
        else:
            out = type(out)(out.logits.float(), None)
        losses = segmentation_loss(out, image, label, epoch, cfg.train.epochs, cfg.train, criterion)
        parts = {"bce_loss": float(losses["bce"]), "dice_loss": float(losses["dice"])}
        if out.reconstruction is not None:
            parts["recon_loss"] = float(losses["recon"])
        return losses["total"], parts, 1

    return compute


def train_segmentation(cache_dir: str | Path | None, out_dir: str | Path, cfg: ExperimentConfig, *,
                       init: str = "scratch", split_file: str | Path | None = None, resume: bool = False,
                       force: bool = False, extend_epochs: int = 0, device: str = "auto",
                       accumulate: int = 1, allow_init_overlap: bool = False,
                       ctx: DistContext | None = None, plan: PlanOptions | None = None,
                       on_epoch: EpochHook | None = None) -> TrainResult:
    """Train (or resume/extend) a segmentation run in ``out_dir``.

    Args:
        cache_dir: prepared cache (``kidneyssl prepare``); None on resume uses the run's own.
        out_dir: run folder (see :mod:`kidneyssl.training.runfolder`).
        cfg: resolved config (ignored on resume: the run's saved config.yaml is used).
        init: ``"scratch"`` (MwoS) or a siamese checkpoint whose encoder initialises MwS.
        split_file: a split.json to use (MwS and MwoS must share one); default: derived from seed.
        resume: continue an interrupted run exactly (model, optimiser, scaler, epoch, RNG).
        force: start over in a folder that holds a run.
        extend_epochs: continue a finished run with this many more epochs.
        device: ``auto``, ``cpu``, ``cuda`` (``cuda:LOCAL_RANK`` under torchrun).
        accumulate: items per optimiser step per rank (global batch = accumulate x world size).
        allow_init_overlap: accept a siamese checkpoint that touched validation/test cases of
            this split (recorded in ``run.json``); by default such a checkpoint is refused.
        ctx: an existing distributed context (default: initialised from the environment).
        on_epoch: called on rank 0 after every epoch with ``(run folder, history rows)``, e.g.
            :func:`kidneyssl.reporting.figures.refresh_history_plot` (the CLI passes it; training
            itself never imports reporting).
        plan: planning before the first step (:mod:`kidneyssl.training.plan`); default: probe
            and print the plan, never ask. With ``dry_run`` nothing is written and the result
            has ``best_epoch == -1`` and an empty history.

    Raises:
        KidneySSLError (RunFolderError, CheckpointError, DataError): before training starts, for
            a cache of another config, a checkpoint of another architecture, an empty dataset,
            fewer than 2 validation cases, or a folder holding another run.
    """
    from kidneyssl.data.cache import open_cache
    from kidneyssl.data.loader import build_loader
    from kidneyssl.data.segmentation import HalfVolumeDataset
    from kidneyssl.losses import bce_dice_weights
    from kidneyssl.models import build_segmentation_model
    from kidneyssl.training.logs import RunLogger
    from kidneyssl.training.plan import announce_plan, estimate_stage

    plan = plan or PlanOptions()
    ctx = ctx or init_distributed(device)
    folder = RunFolder(out_dir)
    cfg, info = begin_run(folder, "segmentation", cfg, section="train", resume=resume, force=force,
                          extend_epochs=extend_epochs, is_main=ctx.is_main and not plan.dry_run)
    cfg = effective_config(cfg)
    if info is not None:
        cache_dir = cache_dir or info.get("cache")
        init = info.get("init", init)
        allow_init_overlap = bool(info.get("allow_init_overlap", allow_init_overlap))
        split_file = folder.split_path
    if cache_dir is None:
        raise KidneySSLError("no prepared cache given (and no run to resume that names one)",
                             remedy=("cache",))
    cache = open_cache(cache_dir, expected=cfg.preprocess)
    split = resolve_split(cache, cfg, split_file)
    # Training halves are inference's halves (preprocessing.halves.half_bounds): same context.
    context = context_voxels(cfg.inference, cfg.preprocess.spacing_mm[2])
    dataset = HalfVolumeDataset(cache, list(split.train), context=context, multiple=16)
    if len(dataset) == 0:
        raise KidneySSLError(f"{cache_dir}: the training cases give no half volumes")
    pos_weight = (float(info["pos_weight"]) if info is not None and "pos_weight" in info
                  else resolve_pos_weight(cfg, dataset))

    seed_everything(cfg.train.seed)
    model = build_segmentation_model(cfg.model).to(ctx.device)
    init_report = None
    if info is None and init != "scratch":
        init_report = _load_init(model, init, cfg, split, allow_init_overlap)
        log.info("MwS: encoder initialised from %s", init)
    optimizer = build_optimizer(model, cfg.train.lr, cfg.train.weight_decay)
    scaler = build_grad_scaler(cfg.train.amp, ctx.device)
    start_epoch, best = 0, {"val_dice": -1.0, "epoch": -1}
    if info is not None:
        state = load_checkpoint(folder.last, kind="segmentation", map_location=str(ctx.device))
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
        restore_rng_state(state["rng"])
    # -- plan before the work: a probe on copies (no RNG trace), printed; --dry-run stops here --
    stage = estimate_stage(plan.stage_name or "train", "segmentation", cfg, cache, split, ctx, model=model,
                           optimizer=optimizer, start_epoch=start_epoch, accumulate=accumulate,
                           probe=plan.announce and plan.probe and ctx.is_main, probe_steps=plan.probe_steps)
    if not announce_plan([stage], plan, ctx=ctx, cfg=cfg):
        return TrainResult(folder.path, -1, float("nan"), float("nan"), [])
    epochs = cfg.train.epochs
    run_info = {"kind": "segmentation", "status": "running", "cache": str(Path(cache_dir).resolve()),
                "init": str(init), "epochs": epochs, "world_size": ctx.world_size,
                "pos_weight": pos_weight, "allow_init_overlap": bool(allow_init_overlap)}
    if info is not None and "init_report" in info:
        run_info["init_report"] = info["init_report"]
    elif init_report:
        run_info["init_report"] = init_report
    if ctx.is_main:
        folder.begin(cfg, split, run_info)
    report = run_info.get("init_report")
    init_touched = [str(c) for c in report.get("touched_cases", ())] if isinstance(report, dict) else []
    history = folder.truncate_history(start_epoch) if ctx.is_main else []
    logger = RunLogger(folder.path, stage, enabled=ctx.is_main, later_seconds=plan.later_seconds)

    net = wrap_ddp(model, ctx)
    log.info("segmentation: %d training halves (%d cases), %d validation cases, epochs %d..%d, init %s",
             len(dataset), len(split.train), len(split.val), start_epoch, epochs - 1, init)
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        w_bce, w_dice = bce_dice_weights(epoch, epochs, cfg.train)
        order = epoch_order(len(dataset), epoch, cfg.train.seed, ctx)
        result = train_one_epoch(
            net, build_loader(dataset, order, num_workers=cfg.train.num_workers,
                              pin_memory=getattr(ctx.device, "type", str(ctx.device)) == "cuda",
                              announce=epoch == start_epoch),
            _segmentation_loss(cfg, epoch, ctx.device, pos_weight),
            optimizer, ctx, accumulate=accumulate, scaler=scaler, amp=cfg.train.amp, total=len(order),
            desc=f"epoch {epoch + 1}/{epochs}", on_step=logger.on_step(epoch))
        per_case = validate_segmentation(net, cache, split.val, cfg, ctx)
        val_dice = float(np.mean(list(per_case.values())))
        row = {"epoch": epoch, "train_loss": result.loss, **result.parts, "val_dice": val_dice,
               "val_dice_per_case": per_case, "w_bce": w_bce, "w_dice": w_dice, "pos_weight": pos_weight,
               "seconds": time.perf_counter() - t0}
        improved = val_dice > best["val_dice"]
        if improved:
            best = {"val_dice": val_dice, "epoch": epoch}
        if ctx.is_main:
            history.append(row)
            _save_epoch(folder, cfg, model, optimizer, scaler, epoch, best, row, improved, split, init,
                        init_touched)
            folder.write_history(history)
            if on_epoch is not None:
                on_epoch(folder.path, history)
        log.info("epoch %d/%d  loss %.4f  val Dice %.4f  (w_bce %.2f, w_dice %.2f)  %.1f s",
                 epoch + 1, epochs, result.loss, val_dice, w_bce, w_dice, row["seconds"])
        logger.end_epoch(row, result, optimizer)  # history.csv, TensorBoard, ETA line
        broadcast_object(None, ctx)  # keep ranks in step with rank 0's writes
    logger.close()
    if ctx.is_main:
        folder.write_info({**run_info, "status": "finished", "best": best})
        history = folder.read_history()
    last = history[-1]["val_dice"] if history else float("nan")
    return TrainResult(folder.path, int(best["epoch"]), float(best["val_dice"]), float(last), history)


def _save_epoch(folder: RunFolder, cfg: ExperimentConfig, model: Any, optimizer: Any, scaler: Any,
                epoch: int, best: dict[str, Any], row: dict[str, Any], improved: bool, split: Split,
                init: str, init_touched: Sequence[str] = ()) -> None:
    """Write last.pt (always, atomic) and best.pt (when the validation Dice improved)."""
    common = {"epoch": epoch, "best": best, "metrics": row, "split": split.to_dict(), "init": str(init),
              "pos_weight": float(row.get("pos_weight", float("nan")))}
    # touched_cases: the cases whose labels shaped these weights (training cases and what the
    # initialisation touched; best.pt was also chosen on the validation cases), so a model used
    # as a locator for unlabeled pretraining can be checked against a split (check_touched_cases).
    trained = set(split.train) | set(init_touched)
    cfg_dict = config_to_dict(cfg)
    state = unwrap(model).state_dict()
    if improved:
        save_checkpoint(folder.best, kind="segmentation", config=cfg_dict, model_state=state,
                        touched_cases=sorted(trained | set(split.val)), **common)
    save_checkpoint(folder.last, kind="segmentation", config=cfg_dict, model_state=state,
                    touched_cases=sorted(trained),
                    optimizer=optimizer.state_dict(), scaler=scaler.state_dict() if scaler else None,
                    rng=capture_rng_state(), **common)
