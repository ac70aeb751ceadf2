"""Segmentation training (paper, sections 3.1 and 3.3): from scratch (MwoS) or from a pretrained
network (MwS: the siamese encoder; MAE / Models Genesis: encoder, or encoder and decoder), on half
volumes, batch size 1.

Loss per item: ``w_bce * BCE + w_dice * SoftDice + recon_weight * MSE(reconstruction, image)``,
``(w_bce, w_dice)`` moving linearly from ``(0.6, 0.4)`` at the first epoch to the configured end at
the last. With ``recon_weight == 0`` the reconstruction branch is not built at all, so every
parameter gets a gradient (DDP requires it).

Validation Dice per epoch is computed on WHOLE volumes: the validation case's cached preprocessed
image goes through :func:`kidneyssl.inference.segment.segment_image` (exactly what ``predict`` and
Table 1 do: image-derived split plane, halves, post-processing) and the mask is compared with the
cached label on the preprocessed grid. It is monitoring (Fig. 5) and feeds ``best.pt``; the
experiment scores each model's LAST checkpoint, so nothing is selected on validation data.

A pretrained initialisation is refused when its run touched a validation or test case of the
split (:func:`kidneyssl.training.split.check_touched_cases`), unless explicitly allowed.
``train_cases`` trains on a subset of the split's training cases (a label budget); validation
and test cases stay those of the split.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Callable, ClassVar, Iterable, Sequence

import numpy as np

from kidneyssl.config import ExperimentConfig, config_to_dict
from kidneyssl.data.cache import Cache, CaseSource
from kidneyssl.errors import CheckpointError, KidneySSLError
from kidneyssl.training.distributed import DistContext, gather_objects, shard, unwrap
from kidneyssl.training.tasks.base import BatchLayout, Task, TaskPlan, TrainSettings

__all__ = ["SegmentationTask", "validate_segmentation", "resolve_pos_weight", "INIT_PARTS",
           "pretrained_parts"]

log = logging.getLogger(__name__)

#: What a pretrained initialisation loads: the encoder (the paper's MwS), or encoder and decoder
#: (as nnssl fine-tunes MAE and Models Genesis networks).
INIT_PARTS = ("encoder", "encoder+decoder")


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


def pretrained_parts(checkpoint: dict[str, Any]) -> dict[str, list[str]]:
    """What a pretraining checkpoint can transfer: ``{"encoder": [prefixes], "decoder": [...]}``
    (checkpoints of the side proxy, and all written before methods had names: the encoder)."""
    parts = checkpoint.get("transfer")
    if isinstance(parts, dict) and parts.get("encoder"):
        return {k: [str(p) for p in v] for k, v in parts.items()}
    return {"encoder": ["encoder."]}


class SegmentationTask(Task):
    """Kidney segmentation on half volumes (the main task).

    Args:
        cache_dir, split_file: see :class:`~kidneyssl.training.tasks.base.Task`.
        init: ``"scratch"`` or a pretraining checkpoint (``pretrain`` RUN/best.pt).
        init_parts: ``encoder`` (MwS) or ``encoder+decoder`` (a restoration method's decoder too).
        allow_init_overlap: accept an initialisation that touched validation/test cases of the
            split (recorded in ``run.json``); refused by default.
        train_cases: train on these training cases only (a subset of the split's training part);
            None: all of them.
    """

    name: ClassVar[str] = "segmentation"
    kind: ClassVar[str] = "segmentation"
    score_key: ClassVar[str] = "val_dice"
    higher_is_better: ClassVar[bool] = True
    stackable: ClassVar[bool] = False
    sample_name: ClassVar[str] = "half volumes"

    def __init__(self, cache_dir: Any = None, split_file: Any = None, *, init: str = "scratch",
                 init_parts: str = "encoder", allow_init_overlap: bool = False,
                 train_cases: Sequence[str] | None = None) -> None:
        super().__init__(cache_dir, split_file)
        if init_parts not in INIT_PARTS:
            raise KidneySSLError(f"init_parts must be one of {', '.join(INIT_PARTS)}, got {init_parts!r}")
        self.init = str(init)
        self.init_parts = init_parts
        self.allow_init_overlap = bool(allow_init_overlap)
        self.train_cases = None if train_cases is None else sorted(str(c) for c in train_cases)
        self.pos_weight: float | None = None
        self.init_touched: list[str] = []
        self.init_labels: list[str] = []
        self._loader_announced = False
        self.halves: Any = None

    # -- configuration ----------------------------------------------------------------------
    def settings(self, cfg: ExperimentConfig) -> TrainSettings:
        t = cfg.train
        return TrainSettings(t.epochs, t.lr, t.weight_decay, t.batch_size, t.seed, "train", t.lr_schedule,
                             t.warmup_epochs)

    def with_epochs(self, cfg: ExperimentConfig, epochs: int) -> ExperimentConfig:
        return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=int(epochs)))

    def effective_config(self, cfg: ExperimentConfig) -> ExperimentConfig:
        """``model.reconstruction`` off when ``train.recon_weight`` is 0 (the branch is not built)."""
        if cfg.train.recon_weight == 0 and cfg.model.reconstruction:
            return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, reconstruction=False))
        return cfg

    # -- life cycle -------------------------------------------------------------------------
    def _setup(self, info: dict[str, Any] | None, ctx: DistContext) -> None:
        from kidneyssl.data.segmentation import HalfVolumeDataset
        from kidneyssl.inference.sliding_window import context_voxels
        from kidneyssl.models.registry import build_network, network_spec

        cfg, split = self._cfg, self.split
        assert split is not None and self.cache is not None
        if not isinstance(self.cache, Cache):
            raise KidneySSLError(f"{self.cache_dir}: segmentation trains on a kidneyssl cache (half volumes that "
                                 "inference restores to the scan); fine-tune on nnU-Net's preprocessed data with "
                                 "nnU-Net itself, from exported weights, or prepare the raw dataset",
                                 remedy=("prepare",))
        if info is not None:
            self.init = str(info.get("init", self.init))
            self.init_parts = str(info.get("init_parts", self.init_parts))
            self.allow_init_overlap = bool(info.get("allow_init_overlap", self.allow_init_overlap))
            if info.get("train_cases") is not None:
                self.train_cases = [str(c) for c in info["train_cases"]]
            if "pos_weight" in info:
                self.pos_weight = float(info["pos_weight"])
            report = info.get("init_report")
            self.init_touched = [str(c) for c in report.get("touched_cases", ())] if isinstance(report, dict) else []
            if isinstance(report, dict):  # written before labels_read existed: every touched case counts
                self.init_labels = [str(c) for c in report.get("labels_read" if "labels_read" in report
                                                               else "touched_cases") or ()]
        if self.train_cases is not None:
            outside = sorted(set(self.train_cases) - set(split.train))
            if outside or not self.train_cases:
                raise KidneySSLError(f"training-case subset must be non-empty and inside the split's training "
                                     f"cases; not training cases: {outside[:5]}")
        self.spec = network_spec(cfg.model)
        multiple = int(build_network(self.spec).size_multiple)
        if cfg.preprocess.pad_multiple % multiple:
            needed = math.lcm(cfg.preprocess.pad_multiple, multiple)
            raise KidneySSLError(f"preprocess.pad_multiple {cfg.preprocess.pad_multiple} is not a multiple of "
                                 f"{multiple}, the {self.spec.name} network's input size multiple; set "
                                 f"preprocess.pad_multiple to {needed} and prepare the cache with it",
                                 remedy=("prepare",))
        # Training halves are inference's halves (preprocessing.halves.half_bounds): same context.
        context = context_voxels(cfg.inference, cfg.preprocess.spacing_mm[2])
        self.halves = HalfVolumeDataset(self.cache, self.cases, context=context, multiple=multiple)
        if len(self.halves) == 0:
            raise KidneySSLError(f"{self.cache_dir}: the training cases give no half volumes")
        self.dataset: Any = self.halves
        if cfg.train.crop_size is not None:
            from kidneyssl.data.segmentation import CroppedHalves

            if any(c % multiple for c in cfg.train.crop_size):
                raise KidneySSLError(f"train.crop_size {cfg.train.crop_size} is not a multiple of {multiple}, the "
                                     f"{self.spec.name} network's input size multiple")
            self.dataset = CroppedHalves(self.halves, cfg.train.crop_size, cfg.train.seed, cfg.train.crop_foreground)

    @property
    def cases(self) -> list[str]:
        """The cases this run trains on (the subset, or every training case of the split)."""
        assert self.split is not None
        return list(self.train_cases) if self.train_cases is not None else list(self.split.train)

    def prepare(self, ctx: DistContext) -> None:
        if self.pos_weight is None:  # from the whole halves: the class balance of the task, not of a crop sample
            self.pos_weight = resolve_pos_weight(self._cfg, self.halves)

    def build_model(self) -> Any:
        from kidneyssl.models.registry import build_network

        model = build_network(self.spec, reconstruction=self._cfg.model.reconstruction)
        return model.to(memory_format=self.memory_format)

    def initialize(self, model: Any) -> dict[str, Any] | None:
        """Load a pretrained checkpoint's encoder (or encoder and decoder) after checking that its
        run never touched a validation or test case of the split.

        Raises:
            CheckpointError: not a pretraining checkpoint, it touched held-out cases, it has no
                decoder to give, or its weights do not fit this network.
        """
        if self.init == "scratch":
            return None
        from kidneyssl.io.checkpoint import load_checkpoint
        from kidneyssl.models.transfer import load_parts
        from kidneyssl.training.split import check_touched_cases

        ckpt = load_checkpoint(self.init, kind="pretrain")
        assert self.split is not None, "setup() first"
        touched = ckpt.get("touched_cases")
        overlap = check_touched_cases(self.init, touched, self.split, self.allow_init_overlap)
        parts = pretrained_parts(ckpt)
        method = str(ckpt.get("method", "side"))
        if self.init_parts == "encoder+decoder" and not parts.get("decoder"):
            raise CheckpointError(f"{self.init}: the {method} method pretrains the encoder only; initialise "
                                  "the encoder alone")
        prefixes = parts["encoder"] + (parts.get("decoder", []) if self.init_parts == "encoder+decoder" else [])
        network = unwrap(model)
        try:
            report = load_parts(network, ckpt, prefixes, exclude=getattr(network, "output_prefixes", ()))
        except CheckpointError as err:
            raise CheckpointError(
                f"{self.init}: its weights do not fit this network (checkpoint model {ckpt['config'].get('model')}; "
                f"this run {config_to_dict(self._cfg.model)}): {err}") from err
        if report.missing:
            raise CheckpointError(f"{self.init}: {self.init_parts} tensors missing from the checkpoint: "
                                  f"{list(report.missing)[:3]}")
        self.init_touched = [str(c) for c in touched or []]
        # a checkpoint written before labels_read existed: every case it touched counts as a label
        self.init_labels = [str(c) for c in (ckpt["labels_read"] if "labels_read" in ckpt else touched) or []]
        log.info("initialised the %s from %s (%s pretraining)", self.init_parts, self.init, method)
        return {"loaded": len(report.loaded), "missing": list(report.missing),
                "unexpected": list(report.unexpected), "held_out_cases_touched": overlap,
                "touched_cases": self.init_touched, "labels_read": self.init_labels, "method": method,
                "parts": self.init_parts,
                "prefixes": prefixes,
                "proxy_input": ckpt["config"].get("pretrain", {}).get("proxy_input", "unknown")
                if method == "side" else None}

    def epoch_items(self, epoch: int, ctx: DistContext, layout: BatchLayout) -> tuple[Iterable[Any], int]:
        from kidneyssl.data.loader import build_loader
        from kidneyssl.training.loop import epoch_order

        cfg = self._cfg
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        order = epoch_order(len(self.dataset), epoch, cfg.train.seed, ctx)
        loader = build_loader(self.dataset, order, num_workers=cfg.train.num_workers,
                              pin_memory=getattr(ctx.device, "type", str(ctx.device)) == "cuda",
                              announce=not self._loader_announced)
        self._loader_announced = True  # the worker cap is said once per run
        return loader, len(order)

    def loss(self, model: Any, item: Any, epoch: int) -> tuple[Any, dict[str, float], int]:
        return self._loss_fn(epoch)(model, item)

    def loss_fn(self, epoch: int) -> Callable[[Any, Any], Any]:
        return self._loss_fn(epoch)

    def _loss_fn(self, epoch: int, pos_weight: float | None = None) -> Callable[[Any, Any], Any]:
        from kidneyssl.losses import BCEDiceLoss, segmentation_loss

        cfg = self._cfg
        weight = self.pos_weight if pos_weight is None else pos_weight
        if weight is None:
            raise RuntimeError("prepare() has not resolved the BCE weight")
        key = (epoch, weight)
        if getattr(self, "_criterion_key", None) != key:
            self._criterion_key, self._criterion = key, BCEDiceLoss(pos_weight=weight)

        # The layout is the config's (train.memory_format): on the CPU channels-last is faster for
        # the demo's small halves, but at the paper's 128x256x144 halves it sends oneDNN to its
        # reference kernel for the 64->16 full-resolution conv's weight gradient
        # (benchmarks/results/training.json), so the paper preset stays contiguous.
        memory_format = self.memory_format

        def compute(model: Any, item: dict[str, Any]) -> tuple[Any, dict[str, float], int]:
            device = next(unwrap(model).parameters()).device
            image = item["image"][None].to(device, non_blocking=True).contiguous(memory_format=memory_format)
            label = item["label"][None].to(device, non_blocking=True)
            out = model(image)
            recon = out.reconstruction.float() if out.reconstruction is not None else None
            out = type(out)(out.logits.float(), recon)
            losses = segmentation_loss(out, image, label, epoch, cfg.train.epochs, cfg.train,
                                       self._criterion.to(device))
            parts = {"bce_loss": float(losses["bce"]), "dice_loss": float(losses["dice"])}
            if recon is not None:
                parts["recon_loss"] = float(losses["recon"])
            return losses["total"], parts, 1

        return compute

    def validate(self, model: Any, epoch: int, ctx: DistContext) -> dict[str, Any]:
        from kidneyssl.losses import bce_dice_weights

        assert self.split is not None and self.cache is not None
        per_case = validate_segmentation(model, self.cache, self.split.val, self._cfg, ctx)
        w_bce, w_dice = bce_dice_weights(epoch, self._cfg.train.epochs, self._cfg.train)
        return {"val_dice": float(np.mean(list(per_case.values()))), "val_dice_per_case": per_case,
                "w_bce": w_bce, "w_dice": w_dice, "pos_weight": self.pos_weight}

    def plan(self, ctx: DistContext, layout: BatchLayout) -> TaskPlan:
        from kidneyssl.inference.sliding_window import choose_strategy, estimate_bytes_per_voxel
        from kidneyssl.preprocessing.split_plane import find_split_x

        assert self.split is not None and self.cache is not None
        cfg = self._cfg
        per_rank = math.ceil(len(self.dataset) / ctx.world_size)
        val_case = self.cache.load(self.split.val[0], mmap=True)
        # the strategy validation will use: segment_image's, from the image-derived plane
        strategy = choose_strategy(val_case.image.shape, find_split_x(None, val_case.image), cfg.inference,
                                   cfg.preprocess.spacing_mm[2],
                                   estimate_bytes_per_voxel(cfg.model, device=ctx.device))
        icfg = cfg.inference
        how = (f"{strategy} ({'x'.join(map(str, icfg.sw_roi_size))} windows, overlap {icfg.sw_overlap})"
               if strategy == "sliding" else strategy)
        acc = layout.accumulate
        unit = ("1 half volume" if cfg.train.crop_size is None
                else f"1 crop of {'x'.join(map(str, cfg.train.crop_size))} from a half volume")
        return TaskPlan(
            train_cases=len(self.cases), val_cases=len(self.split.val), iterations_per_epoch=per_rank,
            steps_per_epoch=math.ceil(per_rank / acc),
            batch=f"{unit}{'' if acc == 1 else f', {acc} per optimiser step'}",
            val_units=math.ceil(len(self.split.val) / ctx.world_size), val_unit="case",
            strategy=f"whole volumes on {how}{', flip TTA' if icfg.tta_flip else ''}")

    def probe(self, ctx: DistContext, layout: BatchLayout) -> tuple[Any, Callable[[Any], Any]]:
        from kidneyssl.inference.segment import segment_image

        assert self.split is not None and self.cache is not None
        val_case = self.cache.load(self.split.val[0], mmap=True)
        cfg = self._cfg

        def validate(m: Any) -> Any:
            return segment_image(m, val_case.image, cfg, spacing_mm=val_case.record.spacing_mm, device=ctx.device)

        return self.dataset[0], validate

    def probe_loss(self, epoch: int) -> Callable[[Any, Any], Any]:
        """The loss the probe times (the BCE weight does not change the step's cost)."""
        return self._loss_fn(epoch, pos_weight=self.pos_weight or 1.0)

    # -- records ----------------------------------------------------------------------------
    def run_info(self) -> dict[str, Any]:
        return {"init": self.init, "init_parts": self.init_parts, "pos_weight": self.pos_weight,
                "allow_init_overlap": self.allow_init_overlap, "train_cases": self.train_cases}

    def touched_cases(self, best: bool) -> list[str]:
        # the cases whose labels shaped these weights (training cases and what the initialisation
        # touched; best.pt was also chosen on the validation cases), so a model used as a locator
        # for unlabeled pretraining can be checked against a split (check_touched_cases)
        assert self.split is not None
        trained = set(self.cases) | set(self.init_touched)
        return sorted(trained | set(self.split.val)) if best else sorted(trained)

    def labels_read(self, best: bool) -> list[str]:
        # the training cases' labels, and those its initialisation read (an image-only
        # pretraining touched images only); best.pt was chosen on the validation labels
        assert self.split is not None
        labels = set(self.cases) | set(self.init_labels)
        return sorted(labels | set(self.split.val)) if best else sorted(labels)

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"init": self.init, "pos_weight": float(self.pos_weight if self.pos_weight is not None else math.nan)}

    def epoch_line(self, epoch: int, epochs: int, row: dict[str, Any]) -> str:
        return (f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  val Dice {row['val_dice']:.4f}  "
                f"(w_bce {row['w_bce']:.2f}, w_dice {row['w_dice']:.2f})  {row['seconds']:.1f} s")
