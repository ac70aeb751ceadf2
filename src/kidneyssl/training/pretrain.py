"""Siamese pretraining on the left/right kidney proxy task (paper, section 2).

Pairs of fixed-size kidney crops (``cfg.pretrain.crop_size`` around each kidney; the whole region
or only the kidney, ``cfg.pretrain.proxy_input``) are labelled 1 when both kidneys are of the same
patient side and 0 otherwise; the network is trained with the contrastive loss (margin
``cfg.pretrain.margin``) and Adam. Each epoch draws a fresh balanced set of ``pairs_per_epoch``
training pairs seeded by ``(seed, epoch)``.

Which cases it reads: only the TRAINING cases of the segmentation split (``split.json``, the same
seeded split segmentation uses). A seeded ``pretrain.val_fraction`` of them is held out as proxy
validation cases, which give one fixed set of ``val_pairs`` pairs; ``best.pt`` is chosen on them.
The segmentation validation and test cases are never read, and every checkpoint records the cases
the run touched (``touched_cases``), so ``train --init`` can refuse a checkpoint that saw a case
its split holds out. Pair accuracy counts a pair as "same side" when the embedding distance is
below ``margin / 2``.

Scans without masks (``unlabeled``): a ``kidneyssl locate`` output, or raw scans that a given
segmentation model (``locator``) locates into ``RUN/located`` first, are filtered by confidence and
prepared into ``RUN/unlabeled_cache`` (:mod:`kidneyssl.unlabeled.located`); their kidneys join the
proxy TRAINING pairs only (proxy validation stays on annotated cases, so runs with and without
unlabeled scans are validated alike). The locator must not have been trained on a validation or
test case of the split, and its training cases count as touched by this run.

Checkpoints (kind ``"siamese"``): ``last.pt`` every epoch (with optimiser and RNG state, for
``--resume``) and ``best.pt`` at the lowest proxy validation loss.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from kidneyssl.config import ExperimentConfig, config_to_dict
from kidneyssl.data.cache import CaseSource
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.checkpoint import load_checkpoint, save_checkpoint
from kidneyssl.training.distributed import (
    DistContext,
    all_reduce_sum,
    broadcast_object,
    init_distributed,
    shard,
    unwrap,
    wrap_ddp,
)
from kidneyssl.training.finetune import EpochHook, resolve_split
from kidneyssl.training.loop import build_optimizer, epoch_order, train_one_epoch
from kidneyssl.training.plan import PlanOptions
from kidneyssl.training.runfolder import RunFolder, begin_run
from kidneyssl.training.seeding import (
    capture_rng_state,
    restore_rng_state,
    seed_everything,
)
from kidneyssl.training.split import Split, check_touched_cases

__all__ = ["PretrainResult", "pretrain_siamese", "evaluate_pairs"]

log = logging.getLogger(__name__)

#: Salt that separates the validation pairs' seed from the per-epoch training pairs' seeds.
VAL_PAIR_SALT = 1_000_003


@dataclass(frozen=True)
class PretrainResult:
    """Where a pretraining run ended."""

    run_dir: Path
    best_epoch: int
    best_val_loss: float
    last_val_accuracy: float
    history: list[dict[str, Any]]


def _pairs(cache: CaseSource, case_ids: Sequence[str], n_pairs: int, seed: int, cfg: ExperimentConfig) -> Any:
    """Balanced kidney-crop pairs of ``case_ids``, drawn anew for each ``set_epoch(e)`` from
    ``(seed, e)`` (items: dict with ``a``, ``b`` (1, *crop_size) and ``label``)."""
    from kidneyssl.data.pairs import KidneyPairDataset

    return KidneyPairDataset(cache, list(case_ids), n_pairs=n_pairs, seed=seed,
                             crop_size=cfg.pretrain.crop_size,
                             mask_outside=cfg.pretrain.proxy_input == "masked")


def proxy_split(split: Split, cfg: ExperimentConfig) -> Split:
    """Proxy-task cases: the segmentation split's TRAINING cases, of which a seeded
    ``pretrain.val_fraction`` (at least two cases: a same-side pair needs two patients) is held out
    for proxy validation. Validation and test cases of ``split`` never appear."""
    import numpy as np

    ids = sorted(split.train)
    if len(ids) < 4:
        raise KidneySSLError(f"{len(ids)} training case(s): pretraining needs at least 4 (2 to train "
                             "the proxy task, 2 to validate it; same-side pairs need two patients)")
    n_val = min(len(ids) - 2, max(2, int(round(len(ids) * cfg.pretrain.val_fraction))))
    order = np.random.default_rng([cfg.pretrain.seed, VAL_PAIR_SALT]).permutation(len(ids))
    val = sorted(ids[i] for i in order[:n_val])
    train = sorted(ids[i] for i in order[n_val:])
    return Split(tuple(train), tuple(val), cfg.pretrain.seed, cfg.pretrain.val_fraction)


def _batches(dataset: Any, order: Sequence[int], batch_size: int):
    import torch

    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield (torch.stack([it["a"] for it in items]), torch.stack([it["b"] for it in items]),
               torch.as_tensor([float(it["label"]) for it in items]))


def _loss_fn(cfg: ExperimentConfig, device: Any):
    from kidneyssl.losses import ContrastiveLoss, pair_accuracy

    loss = ContrastiveLoss(margin=cfg.pretrain.margin, squared_distance=cfg.pretrain.squared_distance)

    def compute(model: Any, batch: Any) -> tuple[Any, dict[str, float], int]:
        a, b, y = (t.to(device, non_blocking=True) for t in batch)
        emb_a, emb_b = model(a, b)
        value = loss(emb_a.float(), emb_b.float(), y)
        acc = pair_accuracy(emb_a.detach().float(), emb_b.detach().float(), y, cfg.pretrain.margin,
                            cfg.pretrain.squared_distance)
        return value, {"train_accuracy": float(acc)}, int(y.numel())

    return compute


def evaluate_pairs(model: Any, dataset: Any, cfg: ExperimentConfig, ctx: DistContext) -> tuple[float, float]:
    """Mean contrastive loss and pair accuracy over all of ``dataset`` (sharded over ranks).

    Returns:
        ``(val_loss, val_accuracy)``, identical on every rank.
    """
    import torch

    from kidneyssl.losses import ContrastiveLoss, pair_accuracy

    loss = ContrastiveLoss(margin=cfg.pretrain.margin, squared_distance=cfg.pretrain.squared_distance)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    loss_sum = acc_sum = count = 0.0
    mine = shard(list(range(len(dataset))), ctx)
    try:
        with torch.inference_mode():
            for a, b, y in _batches(dataset, mine, cfg.pretrain.batch_size):
                a, b, y = a.to(ctx.device), b.to(ctx.device), y.to(ctx.device)
                emb_a, emb_b = net(a, b)
                loss_sum += float(loss(emb_a.float(), emb_b.float(), y)) * y.numel()
                acc_sum += float(pair_accuracy(emb_a.float(), emb_b.float(), y, cfg.pretrain.margin,
                                               cfg.pretrain.squared_distance)) * y.numel()
                count += y.numel()
    finally:
        net.train(was_training)
    loss_sum, acc_sum, count = all_reduce_sum([loss_sum, acc_sum, count], ctx)
    if count == 0:
        raise KidneySSLError("no validation pairs: the validation cases have no kidneys")
    return loss_sum / count, acc_sum / count


def pretrain_siamese(cache_dir: str | Path | None, out_dir: str | Path, cfg: ExperimentConfig, *,
                     split_file: str | Path | None = None, resume: bool = False, force: bool = False,
                     extend_epochs: int = 0, device: str = "auto", ctx: DistContext | None = None,
                     plan: PlanOptions | None = None, on_epoch: EpochHook | None = None,
                     unlabeled: str | Path | None = None, locator: str | Path | None = None,
                     allow_locator_overlap: bool = False) -> PretrainResult:
    """Train (or resume/extend) the siamese network in ``out_dir``.

    Args:
        cache_dir: prepared cache; None on resume uses the run's own.
        out_dir: run folder (files as in :mod:`kidneyssl.training.runfolder`).
        cfg: resolved config (on resume the run's saved config.yaml is used instead).
        split_file: case split to use; default: derived from (cases, train.val_fraction, train.seed),
            i.e. the same split segmentation derives.
        resume, force, extend_epochs, device, ctx, plan, on_epoch: as in
            :func:`kidneyssl.training.finetune.train_segmentation` (a dry run returns
            ``best_epoch == -1`` and an empty history).
        unlabeled: scans without masks for extra proxy training pairs: a ``kidneyssl locate``
            output folder, or (with ``locator``) any scans ``locate`` reads. On resume the run's
            own are used.
        locator: a segmentation checkpoint that locates ``unlabeled`` first (when it holds no
            ``locate.json``).
        allow_locator_overlap: accept a locator trained on validation/test cases of the split
            (recorded in ``run.json``); refused by default.

    Raises:
        KidneySSLError: before training, for a cache of another config, no kidneys/cases,
            fewer than 2 validation cases, or a folder holding another run.
    """
    from kidneyssl.data.cache import open_cache
    from kidneyssl.models import build_siamese_model
    from kidneyssl.training.logs import RunLogger
    from kidneyssl.training.plan import announce_plan, estimate_stage

    plan = plan or PlanOptions()
    ctx = ctx or init_distributed(device)
    folder = RunFolder(out_dir)
    cfg, info = begin_run(folder, "siamese", cfg, section="pretrain", resume=resume, force=force,
                          extend_epochs=extend_epochs, is_main=ctx.is_main and not plan.dry_run)
    if info is not None:
        cache_dir = cache_dir or info.get("cache")
        split_file = folder.split_path
    if cache_dir is None:
        raise KidneySSLError("no prepared cache given (and no run to resume that names one)",
                             remedy=("cache",))
    cache = open_cache(cache_dir, expected=cfg.preprocess)
    split: Split = resolve_split(cache, cfg, split_file)
    proxy = proxy_split(split, cfg)
    touched = sorted(proxy.train + proxy.val)
    assert not set(touched) & split.held_out  # by construction: proxy cases are training cases
    pc = cfg.pretrain
    if info is not None and info.get("unlabeled"):
        unlabeled = info["unlabeled"]["located_dir"]  # resume: the scans the run was started with
        allow_locator_overlap = bool(info["unlabeled"].get("allow_locator_overlap", allow_locator_overlap))
    located, unlabeled_info = None, None
    if unlabeled is not None and not plan.dry_run:
        located, unlabeled_info = _located_scans(unlabeled, locator, folder, cfg, split, ctx,
                                                 allow_locator_overlap)
        touched = sorted(set(touched) | set(located.touched_cases or ()))
    train_ids = list(proxy.train) + (located.prefixed_ids if located is not None else [])
    pair_cache: CaseSource = cache
    if located is not None:
        from kidneyssl.data.cache import CacheUnion
        from kidneyssl.unlabeled.located import UNLABELED_PREFIX

        pair_cache = CacheUnion(cache, {UNLABELED_PREFIX: located.cache})
    val_pairs = _pairs(cache, proxy.val, pc.val_pairs, pc.seed + VAL_PAIR_SALT, cfg)
    train_pairs = _pairs(pair_cache, train_ids, pc.pairs_per_epoch, pc.seed, cfg)
    if len(val_pairs) == 0 or len(train_pairs) == 0:
        raise KidneySSLError(f"{cache_dir}: the proxy {'validation' if len(val_pairs) == 0 else 'training'} "
                             "cases give no kidney pairs")

    seed_everything(pc.seed)
    model = build_siamese_model(cfg.model).to(ctx.device)
    optimizer = build_optimizer(model, pc.lr, pc.weight_decay)
    start_epoch, best = 0, {"val_loss": float("inf"), "epoch": -1}
    if info is not None:
        state = load_checkpoint(folder.last, kind="siamese", map_location=str(ctx.device))
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best = int(state["epoch"]) + 1, dict(state["best"])
        restore_rng_state(state["rng"])
    # -- plan before the work: a probe on copies (no RNG trace), printed; --dry-run stops here --
    stage = estimate_stage(plan.stage_name or "pretrain", "siamese", cfg, cache, split, ctx, model=model,
                           optimizer=optimizer, start_epoch=start_epoch,
                           probe=plan.announce and plan.probe and ctx.is_main, probe_steps=plan.probe_steps)
    if not announce_plan([stage], plan, ctx=ctx, cfg=cfg):
        return PretrainResult(folder.path, -1, float("nan"), float("nan"), [])
    run_info = {"kind": "siamese", "status": "running", "cache": str(Path(cache_dir).resolve()),
                "epochs": pc.epochs, "world_size": ctx.world_size, "proxy_input": pc.proxy_input,
                "proxy_train_cases": list(proxy.train), "proxy_val_cases": list(proxy.val)}
    if unlabeled_info is not None:
        run_info["unlabeled"] = unlabeled_info
    if ctx.is_main:
        folder.begin(cfg, split, run_info)
    history = folder.truncate_history(start_epoch) if ctx.is_main else []
    logger = RunLogger(folder.path, stage, enabled=ctx.is_main, later_seconds=plan.later_seconds)
    net = wrap_ddp(model, ctx)
    log.info("pretrain (%s crops): %d proxy training cases%s, %d proxy validation cases (%d fixed pairs), "
             "all from the segmentation training cases; epochs %d..%d", pc.proxy_input, len(proxy.train),
             f" + {len(located.case_ids)} located unlabeled scans" if located is not None else "",
             len(proxy.val), len(val_pairs), start_epoch, pc.epochs - 1)
    compute = _loss_fn(cfg, ctx.device)
    for epoch in range(start_epoch, pc.epochs):
        t0 = time.perf_counter()
        train_pairs.set_epoch(epoch)
        order = epoch_order(len(train_pairs), epoch, pc.seed, ctx)
        n_batches = -(-len(order) // pc.batch_size)
        result = train_one_epoch(net, _batches(train_pairs, order, pc.batch_size), compute, optimizer, ctx,
                                 total=n_batches, desc=f"pretrain {epoch + 1}/{pc.epochs}",
                                 on_step=logger.on_step(epoch))
        val_loss, val_acc = evaluate_pairs(net, val_pairs, cfg, ctx)
        row = {"epoch": epoch, "train_loss": result.loss, **result.parts, "val_loss": val_loss,
               "val_accuracy": val_acc, "seconds": time.perf_counter() - t0}
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"val_loss": val_loss, "epoch": epoch}
        if ctx.is_main:
            history.append(row)
            common = {"epoch": epoch, "best": best, "metrics": row, "split": split.to_dict(),
                      "touched_cases": touched}
            state = unwrap(model).state_dict()
            if improved:
                save_checkpoint(folder.best, kind="siamese", config=config_to_dict(cfg), model_state=state,
                                **common)
            save_checkpoint(folder.last, kind="siamese", config=config_to_dict(cfg), model_state=state,
                            optimizer=optimizer.state_dict(), rng=capture_rng_state(), **common)
            folder.write_history(history)
            if on_epoch is not None:
                on_epoch(folder.path, history)
        log.info("pretrain epoch %d/%d  loss %.4f  val loss %.4f  val pair accuracy %.3f  %.1f s",
                 epoch + 1, pc.epochs, result.loss, val_loss, val_acc, row["seconds"])
        logger.end_epoch(row, result, optimizer)  # history.csv, TensorBoard, ETA line
        broadcast_object(None, ctx)
    logger.close()
    if ctx.is_main:
        folder.write_info({**run_info, "status": "finished", "best": best})
        history = folder.read_history()
    last_acc = history[-1]["val_accuracy"] if history else float("nan")
    return PretrainResult(folder.path, int(best["epoch"]), float(best["val_loss"]), float(last_acc), history)


def _located_scans(unlabeled: str | Path, locator: str | Path | None, folder: RunFolder,
                   cfg: ExperimentConfig, split: Split, ctx: DistContext,
                   allow_overlap: bool) -> tuple[Any, dict[str, Any]]:
    """The located unlabeled scans of a pretraining run, and what ``run.json`` records of them.

    Rank 0 locates (with ``locator``, into ``RUN/located``, when ``unlabeled`` holds no
    ``locate.json``; an earlier run's locating is reused) and prepares ``RUN/unlabeled_cache``;
    the other ranks wait and open the result.

    Raises:
        DataError: ``unlabeled`` is not located and no locator is given; no scan passes the filter.
        CheckpointError: the locator touched a held-out case of ``split`` (see
            :func:`~kidneyssl.training.split.check_touched_cases`).
    """
    from kidneyssl.unlabeled.locate import LOCATE_JSON, locate_path
    from kidneyssl.unlabeled.located import open_located, prepare_located, read_locate_json

    located_dir = Path(unlabeled)
    if not (located_dir / LOCATE_JSON).is_file() and locator is not None:
        # refuse a leaky locator before spending time on locating
        check_touched_cases(locator, load_checkpoint(locator, kind="segmentation").get("touched_cases"), split,
                            allow_overlap, what="locator")
        located_dir = folder.path / "located"
        if ctx.is_main and not (located_dir / LOCATE_JSON).is_file():
            log.info("locating the kidneys of %s with %s -> %s", unlabeled, locator, located_dir)
            summary = locate_path(locator, unlabeled, located_dir, device=str(ctx.device))
            log.info("locate: %s", summary)
        broadcast_object(None, ctx)
    elif locator is not None:
        log.info("%s is already located (locate.json); the locator given is not used", located_dir)
    record = read_locate_json(located_dir)
    overlap = check_touched_cases(located_dir / LOCATE_JSON, record.get("touched_cases"), split,
                                  allow_overlap, what="locator")
    min_conf = cfg.pretrain.unlabeled_min_confidence
    if ctx.is_main:
        located = prepare_located(located_dir, folder.path / "unlabeled_cache", cfg.preprocess, min_conf)
    broadcast_object(None, ctx)
    if not ctx.is_main:
        located = open_located(located_dir, folder.path / "unlabeled_cache", cfg.preprocess, min_conf)
    info = {**located.report, "locator": located.locator, "locator_touched_cases": located.touched_cases,
            "held_out_cases_touched_by_locator": overlap, "allow_locator_overlap": bool(allow_overlap),
            "cases": list(located.case_ids)}
    return located, info


__all__.append("proxy_split")
