"""The paper's proxy task (section 2): which side of the body is a kidney on?

Pairs of fixed-size kidney crops (``pretrain.crop_size`` around each kidney; the whole region or
only the kidney, ``pretrain.proxy_input``) are labelled 1 when both kidneys are of the same
patient side and 0 otherwise; a siamese network (the segmentation network's encoder, shared by
both branches) is trained with the contrastive loss (margin ``pretrain.margin``). Each epoch draws
a fresh balanced set of ``pairs_per_epoch`` training pairs seeded by ``(seed, epoch)``; the
held-out proxy validation cases give one fixed set of ``val_pairs`` pairs. Pair accuracy counts a
pair as "same side" when the embedding distance is below ``margin / 2``.

Scans without masks (``unlabeled``): a ``kidneyssl locate`` output, or raw scans that a given
segmentation model (``locator``) locates into ``RUN/located`` first, are filtered by confidence and
prepared into ``RUN/unlabeled_cache`` (:mod:`kidneyssl.unlabeled.located`); their kidneys join the
proxy TRAINING pairs only (proxy validation stays on annotated cases, so runs with and without
unlabeled scans are validated alike). The locator must not have been trained on a validation or
test case of the split, and its training cases count as touched by this run.

At a label budget (``label_cases``, issue 22) the proxy reads the masks of those cases only; the
other training images come in as located scans (the experiment locates them with the same
budget's scratch model). With located scans, 2 or 3 annotated cases suffice: 2 validate (a
same-side pair needs two patients) and the training pairs come from the rest and the located
scans (:func:`~kidneyssl.training.tasks.pretraining.proxy_split` with ``min_train=0``); one
annotated case cannot validate the proxy and is refused. When the budget's locator finds no
usable kidney in the other images (a scratch model trained on 2 cases may find none), the
budget's annotated cases go on alone, and when the training kidneys cannot form both kinds of
pair (fewer than 4 annotated cases and no usable scan, or scans located on one side only) the
proxy validation cases join the training pairs (``best.pt`` is then chosen on pairs of cases it
trained on); ``run.json`` records this as ``unlabeled.fallback``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Iterator, Sequence

from kidneyssl.config import ExperimentConfig
from kidneyssl.data.cache import Cache, CaseSource
from kidneyssl.errors import KidneySSLError
from kidneyssl.io.checkpoint import load_checkpoint
from kidneyssl.training.distributed import DistContext, all_reduce_sum, broadcast_object, shard, unwrap
from kidneyssl.training.split import check_touched_cases
from kidneyssl.training.tasks.base import BatchLayout, TaskPlan, TrainSettings
from kidneyssl.training.tasks.pretraining import VAL_SALT, PretrainingTask

__all__ = ["SideTask", "pair_batches"]

log = logging.getLogger(__name__)


def pair_batches(dataset: Any, order: Sequence[int], batch_size: int) -> Iterator[tuple[Any, Any, Any]]:
    """``(a, b, label)`` tensors of ``batch_size`` pairs at a time, in ``order``."""
    import torch

    for start in range(0, len(order), batch_size):
        items = [dataset[i] for i in order[start:start + batch_size]]
        yield (torch.stack([it["a"] for it in items]), torch.stack([it["b"] for it in items]),
               torch.as_tensor([float(it["label"]) for it in items]))


class SideTask(PretrainingTask):
    """Siamese same-side / opposite-side pretraining (``--method side``).

    Args:
        cache_dir, split_file: see :class:`~kidneyssl.training.tasks.base.Task`.
        unlabeled: scans without masks for extra training pairs: a ``kidneyssl locate`` output, or
            (with ``locator``) any scans ``locate`` reads. On resume the run's own are used.
        locator: a segmentation checkpoint that locates ``unlabeled`` first.
        allow_locator_overlap: accept a locator trained on validation/test cases (recorded).
        label_cases: the training cases whose masks the proxy may read (a label budget).
    """

    name: ClassVar[str] = "side"
    sample_name: ClassVar[str] = "pairs"
    reads_labels: ClassVar[bool] = True  # kidney locations (and, masked, the crops) come from the masks

    def __init__(self, cache_dir: Any = None, split_file: Any = None, *, unlabeled: str | Path | None = None,
                 locator: str | Path | None = None, allow_locator_overlap: bool = False,
                 label_cases: Sequence[str] | None = None) -> None:
        super().__init__(cache_dir, split_file, label_cases=label_cases)
        self.unlabeled = unlabeled
        self.locator = locator
        self.allow_locator_overlap = bool(allow_locator_overlap)
        self.located: Any = None
        self.unlabeled_info: dict[str, Any] | None = None

    def settings(self, cfg: ExperimentConfig) -> TrainSettings:
        p = cfg.pretrain
        return TrainSettings(p.epochs, p.lr, p.weight_decay, p.batch_size, p.seed, "pretrain")

    def with_epochs(self, cfg: ExperimentConfig, epochs: int) -> ExperimentConfig:
        return dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, epochs=int(epochs)))

    # -- life cycle -------------------------------------------------------------------------
    @property
    def min_proxy_train(self) -> int:
        """0 with scans to locate: their kidneys give training pairs (the annotated cases may all validate)."""
        return 0 if self.unlabeled is not None else 2

    def _setup(self, info: dict[str, Any] | None, ctx: DistContext) -> None:
        if info is not None and info.get("unlabeled"):
            self.unlabeled = info["unlabeled"]["located_dir"]  # resume: the scans it was started with
            self.allow_locator_overlap = bool(info["unlabeled"].get("allow_locator_overlap",
                                                                    self.allow_locator_overlap))
        super()._setup(info, ctx)

    def _setup_method(self, info: dict[str, Any] | None, ctx: DistContext) -> None:
        pc = self._cfg.pretrain
        assert self.cache is not None
        self.val_pairs = self._pairs(self.cache, self.proxy.val, pc.val_pairs, pc.seed + VAL_SALT)
        # with scans to locate, prepare() makes the training pairs; here they may not form yet
        # (a label budget of 2-3 cases leaves 0 or 1 annotated case to train on)
        try:
            self.train_pairs = self._pairs(self.cache, self.proxy.train, pc.pairs_per_epoch, pc.seed) \
                if self.proxy.train else None
        except KidneySSLError:
            if self.unlabeled is None:
                raise
            self.train_pairs = None
        if len(self.val_pairs) == 0 or (self.train_pairs is not None and len(self.train_pairs) == 0):
            raise KidneySSLError(f"{self.cache_dir}: the proxy {'validation' if len(self.val_pairs) == 0 else 'training'}"
                                 " cases give no kidney pairs")

    def _pairs(self, cache: CaseSource, case_ids: Sequence[str], n_pairs: int, seed: int) -> Any:
        from kidneyssl.data.pairs import KidneyPairDataset

        pc = self._cfg.pretrain
        return KidneyPairDataset(cache, list(case_ids), n_pairs=n_pairs, seed=seed, crop_size=pc.crop_size,
                                 mask_outside=pc.proxy_input == "masked")

    def prepare(self, ctx: DistContext) -> None:
        """Locate and prepare the unlabeled scans (rank 0 works, the others wait and open them);
        their kidneys join the training pairs."""
        if self.unlabeled is None:
            return
        from kidneyssl.data.cache import CacheUnion
        from kidneyssl.unlabeled.located import UNLABELED_PREFIX

        assert self.run_dir is not None and self.cache is not None
        if not isinstance(self.cache, Cache):
            raise KidneySSLError(f"{self.cache_dir}: scans without masks join pairs from a kidneyssl cache; "
                                 "prepare the dataset instead of reading nnU-Net's preprocessed folder")
        pc = self._cfg.pretrain
        self.located, self.unlabeled_info = self._located_scans(ctx)
        source: CaseSource = self.cache
        scans: list[str] = []
        if self.located is not None:
            self.extra_touched = self.extra_labels = sorted(set(self.located.touched_cases or ()))
            source = CacheUnion(self.cache, {UNLABELED_PREFIX: self.located.cache})
            scans = self.located.prefixed_ids
        try:
            if not self.proxy.train and not scans:
                raise KidneySSLError("no training case and no located scan")
            self.train_pairs = self._pairs(source, list(self.proxy.train) + scans, pc.pairs_per_epoch, pc.seed)
            if self.located is None:
                self.unlabeled_info["fallback"] = "no located scan usable: the annotated training cases alone give the pairs"
        except KidneySSLError:
            if self.label_cases is None:
                raise
            # a label budget of 2-3 cases whose locator found nothing usable, or scans located on one side only
            self.train_pairs = self._pairs(source, list(self.proxy.train) + list(self.proxy.val) + scans,
                                           pc.pairs_per_epoch, pc.seed)
            self.unlabeled_info["fallback"] = ("the annotated training cases and located scans cannot form both kinds "
                                               "of pair: the proxy validation cases join the training pairs")
        if "fallback" in self.unlabeled_info:
            log.warning("%s: %s", self.run_dir, self.unlabeled_info["fallback"])

    def _located_scans(self, ctx: DistContext) -> tuple[Any, dict[str, Any]]:
        """The located unlabeled scans (None at a label budget when none is usable), and what
        ``run.json`` records of them.

        Raises:
            DataError: the scans are not located and no locator is given; no scan passes the filter.
            CheckpointError: the locator touched a held-out case of the split.
        """
        from kidneyssl.unlabeled.locate import LOCATE_JSON, locate_path
        from kidneyssl.unlabeled.located import filter_located, open_located, prepare_located, read_locate_json

        assert self.run_dir is not None and self.split is not None and self.unlabeled is not None
        located_dir = Path(self.unlabeled)
        if not (located_dir / LOCATE_JSON).is_file() and self.locator is not None:
            # refuse a leaky locator before spending time on locating
            check_touched_cases(self.locator, load_checkpoint(self.locator, kind="segmentation").get("touched_cases"),
                                self.split, self.allow_locator_overlap, what="locator")
            located_dir = self.run_dir / "located"
            if ctx.is_main and not (located_dir / LOCATE_JSON).is_file():
                log.info("locating the kidneys of %s with %s -> %s", self.unlabeled, self.locator, located_dir)
                summary = locate_path(self.locator, self.unlabeled, located_dir, device=str(ctx.device))
                log.info("locate: %s", summary)
            broadcast_object(None, ctx)
        elif self.locator is not None:
            log.info("%s is already located (locate.json); the locator given is not used", located_dir)
        record = read_locate_json(located_dir)
        overlap = check_touched_cases(located_dir / LOCATE_JSON, record.get("touched_cases"), self.split,
                                      self.allow_locator_overlap, what="locator")
        min_conf = self._cfg.pretrain.unlabeled_min_confidence
        if self.label_cases is not None and not filter_located(record["cases"], min_conf)[0]:
            # a budget's own scratch model may find nothing in the other images: the budget's
            # annotated cases go on alone (recorded) rather than stopping the experiment
            return None, {"located_dir": str(located_dir.resolve()), "used": 0, "min_confidence": min_conf,
                          "scans": len(record["cases"]), "locator": record.get("model"),
                          "locator_touched_cases": record.get("touched_cases"),
                          "held_out_cases_touched_by_locator": overlap, "cases": []}
        located = None
        if ctx.is_main:
            located = prepare_located(located_dir, self.run_dir / "unlabeled_cache", self._cfg.preprocess, min_conf)
        broadcast_object(None, ctx)
        if not ctx.is_main:
            located = open_located(located_dir, self.run_dir / "unlabeled_cache", self._cfg.preprocess, min_conf)
        assert located is not None
        info = {**located.report, "locator": located.locator, "locator_touched_cases": located.touched_cases,
                "held_out_cases_touched_by_locator": overlap, "allow_locator_overlap": self.allow_locator_overlap,
                "cases": list(located.case_ids)}
        return located, info

    def build_model(self) -> Any:
        from kidneyssl.models.registry import build_network, network_spec
        from kidneyssl.models.siamese import SiameseNet

        network = build_network(network_spec(self._cfg.model))
        model: Any = SiameseNet(encoder=network.encoder, bottleneck_channels=int(network.bottleneck_channels),
                                embedding_dim=self._cfg.model.embedding_dim)
        return model.to(memory_format=self.memory_format)

    def epoch_items(self, epoch: int, ctx: DistContext, layout: BatchLayout) -> tuple[Iterable[Any], int]:
        from kidneyssl.training.loop import epoch_order

        if self.train_pairs is None:
            raise RuntimeError("prepare() has not made the training pairs from the located scans")
        self.train_pairs.set_epoch(epoch)
        order = epoch_order(len(self.train_pairs), epoch, self._cfg.pretrain.seed, ctx)
        return pair_batches(self.train_pairs, order, layout.micro_batch), math.ceil(len(order) / layout.micro_batch)

    def _criterion(self) -> Any:
        from kidneyssl.losses import ContrastiveLoss

        pc = self._cfg.pretrain
        return ContrastiveLoss(margin=pc.margin, squared_distance=pc.squared_distance)

    def loss(self, model: Any, item: Any, epoch: int) -> tuple[Any, dict[str, float], int]:
        from kidneyssl.losses import pair_accuracy

        pc = self._cfg.pretrain
        device = next(unwrap(model).parameters()).device
        a, b, y = (t.to(device, non_blocking=True) for t in item)
        a, b = (t.contiguous(memory_format=self.memory_format) for t in (a, b))
        emb_a, emb_b = model(a, b)
        value = self._criterion()(emb_a.float(), emb_b.float(), y)
        acc = pair_accuracy(emb_a.detach().float(), emb_b.detach().float(), y, pc.margin, pc.squared_distance)
        return value, {"train_accuracy": float(acc)}, int(y.numel())

    def validate(self, model: Any, epoch: int, ctx: DistContext) -> dict[str, Any]:
        """Mean contrastive loss and pair accuracy over the fixed validation pairs (sharded)."""
        loss, acc = evaluate_pairs(model, self.val_pairs, self._cfg, ctx)
        return {"val_loss": loss, "val_accuracy": acc}

    def plan(self, ctx: DistContext, layout: BatchLayout) -> TaskPlan:
        pc = self._cfg.pretrain
        iterations = self.per_rank_units(pc.pairs_per_epoch, ctx.world_size, layout.micro_batch)
        crop = "x".join(str(c) for c in pc.crop_size)
        located = len(self.located.case_ids) if self.located is not None else 0
        scans = (f" + {located} located scans" if located else " + located scans (not counted yet)"
                 if self.unlabeled is not None else "")
        return TaskPlan(
            train_cases=len(self.proxy.train) + located, val_cases=len(self.proxy.val), iterations_per_epoch=iterations,
            steps_per_epoch=iterations, batch=f"{layout.micro_batch} pairs of {crop} crops",
            val_units=self.per_rank_units(len(self.val_pairs), ctx.world_size, layout.micro_batch),
            val_unit=f"batch of {layout.micro_batch} pairs",
            strategy=f"embedding distance of {len(self.val_pairs)} fixed kidney-crop pairs; training pairs from "
                     f"{len(self.proxy.train)} annotated cases{scans}")

    def probe(self, ctx: DistContext, layout: BatchLayout) -> tuple[Any, Callable[[Any], Any]]:
        import torch

        n = layout.micro_batch
        source = self.train_pairs if self.train_pairs is not None else self.val_pairs  # same cost per pair
        batch = next(pair_batches(source, list(range(min(n, len(source)))), n))
        val_batch = next(pair_batches(self.val_pairs, list(range(min(n, len(self.val_pairs)))), n))

        def validate(m: Any) -> Any:
            a, b, _ = (t.to(ctx.device) for t in val_batch)
            with torch.inference_mode():
                return m(a, b)

        return batch, validate

    # -- records ----------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        info = {**super().run_info(), "proxy_input": self._cfg.pretrain.proxy_input}
        if self.unlabeled_info is not None:
            info["unlabeled"] = self.unlabeled_info
        return info

    def epoch_line(self, epoch: int, epochs: int, row: dict[str, Any]) -> str:
        return (f"pretrain epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  val loss {row['val_loss']:.4f}  "
                f"val pair accuracy {row['val_accuracy']:.3f}  {row['seconds']:.1f} s")


def evaluate_pairs(model: Any, dataset: Any, cfg: ExperimentConfig, ctx: DistContext) -> tuple[float, float]:
    """Mean contrastive loss and pair accuracy over all of ``dataset`` (sharded over ranks).

    Returns:
        ``(val_loss, val_accuracy)``, identical on every rank.
    """
    import torch

    from kidneyssl.losses import ContrastiveLoss, pair_accuracy

    pc = cfg.pretrain
    loss = ContrastiveLoss(margin=pc.margin, squared_distance=pc.squared_distance)
    net = unwrap(model)
    was_training = net.training
    net.eval()
    loss_sum = acc_sum = count = 0.0
    mine = shard(list(range(len(dataset))), ctx)
    try:
        with torch.inference_mode():
            for a, b, y in pair_batches(dataset, mine, pc.batch_size):
                a, b, y = a.to(ctx.device), b.to(ctx.device), y.to(ctx.device)
                emb_a, emb_b = net(a, b)
                loss_sum += float(loss(emb_a.float(), emb_b.float(), y)) * y.numel()
                acc_sum += float(pair_accuracy(emb_a.float(), emb_b.float(), y, pc.margin,
                                               pc.squared_distance)) * y.numel()
                count += y.numel()
    finally:
        net.train(was_training)
    loss_sum, acc_sum, count = all_reduce_sum([loss_sum, acc_sum, count], ctx)
    if count == 0:
        raise KidneySSLError("no validation pairs: the validation cases have no kidneys")
    return loss_sum / count, acc_sum / count


__all__.append("evaluate_pairs")
