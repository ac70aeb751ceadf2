"""Frozen configuration dataclasses: the paper's defaults live here and nowhere else.

Every config is built once (by the CLI from a preset file plus ``--set key=value`` overrides),
passed down, and saved in every cache, checkpoint, run folder and report.

Presets ship in ``kidneyssl/presets/*.yaml``: ``paper`` (the paper's settings, for a GPU) and
``demo`` (coarser spacing and fewer epochs, for a laptop CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, TypeVar

from kidneyssl.errors import KidneySSLError

__all__ = [
    "PreprocessConfig",
    "ModelConfig",
    "PretrainConfig",
    "SegTrainConfig",
    "InferenceConfig",
    "ProtocolConfig",
    "PRECISIONS",
    "MEMORY_FORMATS",
    "LR_SCHEDULES",
    "ExperimentConfig",
    "PROXY_INPUTS",
    "SELECT_BY",
    "ConfigError",
    "config_to_dict",
    "config_from_dict",
    "load_preset",
    "load_config",
    "apply_overrides",
    "available_presets",
]


class ConfigError(KidneySSLError, ValueError):
    """A configuration file, preset or override is invalid."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes network input (paper, section 3.2).

    Attributes:
        spacing_mm: target voxel spacing (z, y, x) in mm, in canonical array-axis order.
        window_hu: intensity window (low, high) in Hounsfield units; values are clipped to it.
        pad_multiple: every axis is zero-padded up to a multiple of this (the network downsamples 4x).
        keep_tumor: keep tumour (label 2) as its own class instead of merging it into kidney.
        image_interpolation: ``linear`` (trilinear) or ``cubic`` for the image.
    """

    spacing_mm: tuple[float, float, float] = (3.22, 1.62, 1.62)
    window_hu: tuple[float, float] = (-80.0, 300.0)
    pad_multiple: int = 16
    keep_tumor: bool = False
    image_interpolation: str = "linear"

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ConfigError(f"spacing_mm must be 3 positive numbers, got {self.spacing_mm!r}")
        if len(self.window_hu) != 2 or not self.window_hu[0] < self.window_hu[1]:
            raise ConfigError(f"window_hu must be (low, high) with low < high, got {self.window_hu!r}")
        if self.pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if self.image_interpolation not in ("linear", "cubic"):
            raise ConfigError(
                f"image_interpolation must be 'linear' or 'cubic', got {self.image_interpolation!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the dense encoder, the U-Net decoder, the reconstruction branch and the
    siamese head (paper, section 3.1 and Fig. 2-3).

    Attributes:
        architecture: the network, by its registered name (``kidneyssl.models.registry``):
            ``dense-unet`` (the paper's; the fields below configure it), ``plain-unet`` or
            ``resenc-unet`` (nnU-Net's networks, from ``nnunet_plans``; ``kidneyssl.models.nnunet``).
        in_channels: image channels (1 for CT).
        out_channels: segmentation channels (1: kidney vs background, sigmoid).
        init_features: channels of the input convolution.
        growth_rate: channels each densely connected layer adds.
        block_layers: densely connected layers per encoder block (paper: 2, 2, 4, 8).
        norm_groups: GroupNorm groups (clamped to divide the channel count).
        embedding_dim: siamese embedding size.
        reconstruction: build the reconstruction branch (regulariser; training only).
        gradient_checkpointing: recompute dense layers in backward to save memory.
        nnunet_plans: nnU-Net plans file (``nnUNetPlans.json``) the nnU-Net networks are built
            from (as ``nnUNetv2_train`` builds them); checkpoints store the resolved network, so
            inference needs no plans file.
        nnunet_configuration: the plans' configuration (``3d_fullres``).
    """

    architecture: str = "dense-unet"
    in_channels: int = 1
    out_channels: int = 1
    init_features: int = 16
    growth_rate: int = 16
    block_layers: tuple[int, ...] = (2, 2, 4, 8)
    norm_groups: int = 8
    embedding_dim: int = 128
    reconstruction: bool = True
    gradient_checkpointing: bool = False
    nnunet_plans: str | None = None
    nnunet_configuration: str = "3d_fullres"

    def __post_init__(self) -> None:
        if not 1 <= len(self.block_layers) <= 6 or any(n < 1 for n in self.block_layers):
            raise ConfigError(
                f"block_layers must list 1 to 6 dense blocks of >= 1 layer each (inputs are padded to a "
                f"multiple of 2 ** blocks), got {self.block_layers!r}"
            )
        if not self.architecture or not isinstance(self.architecture, str):
            raise ConfigError(f"model.architecture must name a registered network, got {self.architecture!r}")
        for name in ("in_channels", "out_channels", "init_features", "growth_rate", "norm_groups",
                     "embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


#: Proxy-task inputs: the whole region around each kidney (the paper's text), or the region with
#: everything outside the kidney mask zeroed (the authors' code).
PROXY_INPUTS = ("region", "masked")
#: What a pretraining run's ``best.pt`` may be chosen on (:attr:`PretrainConfig.select_by`).
SELECT_BY = ("val_loss", "probe_dice")


@dataclass(frozen=True)
class PretrainConfig:
    """Siamese proxy-task training (paper, section 2).

    Attributes:
        epochs: training epochs.
        pairs_per_epoch: training pairs drawn per epoch (balanced same/opposite side).
        val_pairs: proxy validation pairs (fixed), drawn from the held-out proxy validation cases.
        val_fraction: fraction of the segmentation TRAINING cases held out for proxy validation
            (``best.pt`` is chosen on them); the segmentation validation and test cases are never
            read by pretraining.
        batch_size: pairs per optimiser step.
        lr, weight_decay: Adam settings.
        margin: contrastive-loss margin m.
        squared_distance: use d = ||a-b||^2 (the paper's formula) instead of the Euclidean distance.
        crop_size: kidney crop size (z, y, x) in voxels at ``preprocess.spacing_mm``; multiples of 16.
        proxy_input: ``region``: the whole fixed-size region around the kidney (the paper's text:
            "a fixed region of 64x112x112 pixels around the kidney"); ``masked``: the same region
            with every voxel outside that kidney's mask zeroed (the authors' code; the paper also
            says "only the kidney part of the scan is passed"). The experiment can run both.
        seed: seed for pair sampling, initialisation and data order.
        unlabeled_min_confidence: with unlabeled scans (``pretrain --unlabeled``), a located scan
            is used only when the mean kidney probability inside its located mask is at least this.
        probe_steps: after every pretraining epoch, train a frozen-encoder probe (a 1x1x1 conv head
            on the encoder's features, :mod:`kidneyssl.training.tasks.probe`) for this many steps
            on the run's own held-out training cases and record its kidney Dice (``probe_dice``);
            0 (default): no probe. It informs and chooses nothing unless ``select_by`` says so.
        select_by: what ``best.pt`` is chosen on: ``val_loss`` (the method's validation loss,
            default) or ``probe_dice`` (the probe's Dice; needs ``probe_steps`` > 0, and the
            probe cases' labels then count as read by ``best.pt``).
    """

    epochs: int = 50
    pairs_per_epoch: int = 256
    val_pairs: int = 64
    val_fraction: float = 0.2
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-2
    margin: float = 1.0
    squared_distance: bool = False
    crop_size: tuple[int, int, int] = (64, 112, 112)
    proxy_input: str = "region"
    seed: int = 0
    unlabeled_min_confidence: float = 0.5
    probe_steps: int = 0
    select_by: str = "val_loss"

    def __post_init__(self) -> None:
        if self.probe_steps < 0:
            raise ConfigError(f"pretrain.probe_steps must be >= 0, got {self.probe_steps}")
        if self.select_by not in SELECT_BY:
            raise ConfigError(f"pretrain.select_by must be one of {', '.join(SELECT_BY)}, got {self.select_by!r}")
        if self.select_by == "probe_dice" and self.probe_steps == 0:
            raise ConfigError("pretrain.select_by=probe_dice needs the probe: set pretrain.probe_steps > 0")
        if not 0.0 <= self.unlabeled_min_confidence <= 1.0:
            raise ConfigError("pretrain.unlabeled_min_confidence must be in [0, 1], got "
                              f"{self.unlabeled_min_confidence}")
        if len(self.crop_size) != 3 or any(c < 16 or c % 16 for c in self.crop_size):
            raise ConfigError(
                f"crop_size must be 3 positive multiples of 16 (the encoder downsamples 4 times), "
                f"got {self.crop_size!r}"
            )
        if self.proxy_input not in PROXY_INPUTS:
            raise ConfigError(f"proxy_input must be one of {PROXY_INPUTS}, got {self.proxy_input!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"pretrain.val_fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("epochs", "pairs_per_epoch", "val_pairs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"pretrain.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or self.margin <= 0:
            raise ConfigError("pretrain.lr and pretrain.margin must be > 0, weight_decay >= 0")


@dataclass(frozen=True)
class SegTrainConfig:
    """Segmentation training (paper, section 3.1 and 3.3).

    The loss is ``w_bce * BCE + w_dice * SoftDice (+ recon_weight * MSE)``; ``w_bce`` moves linearly
    from ``bce_weight_start`` at the first epoch to ``bce_weight_end`` at the last, and ``w_dice``
    by the equal and opposite amount.

    ``pos_weight`` weights the kidney voxels in the BCE term (the paper's "weighted BCE"). ``auto``
    computes it once per run from the training cases: with ``f`` the fraction of kidney voxels over
    all training half volumes, ``pos_weight = sqrt((1 - f) / f)`` (the square root of the
    background/foreground ratio: it counters the class imbalance without the strong
    over-segmentation bias that the full ratio, ~50-100 for kidneys, gives a thresholded sigmoid).
    The value used is recorded in the run (``run.json``, checkpoints). A number sets it directly.

    ``precision`` is the training precision of every method (``fp32``, ``bf16``, ``fp16``, ``auto``:
    :mod:`kidneyssl.training.precision`); unset, ``amp: true`` (the earlier switch) means ``auto``
    and ``amp: false`` float32. ``cudnn_benchmark`` lets cuDNN time its convolution algorithms on
    CUDA (off in deterministic mode).

    ``crop_size`` (default none: whole halves, the paper's) trains on random crops of the halves
    instead, centred on a kidney voxel with probability ``crop_foreground``; validation and
    inference always see whole volumes. ``memory_format`` is the training tensors' layout
    (``contiguous`` or ``channels_last``: which is faster depends on the size and the device,
    ``benchmarks/results/training.json``). ``lr_schedule`` ``constant`` keeps Adam's rate (the
    paper's), ``poly`` decays it as nnU-Net does, ``(1 - step / steps) ** 0.9``; ``warmup_epochs``
    ramps it up linearly over that many epochs first.

    ``num_workers`` reader processes read the memory-mapped half volumes ahead of the training step
    (pinned memory on CUDA); 0 reads them in the training process (enough on a CPU, where reading
    is ~6 % of a step; the paper preset uses 4 for GPUs).

    ``nnunet_fold`` is the split when the data is an nnU-Net preprocessed folder: the fold of its
    ``splits_final.json`` (training = the fold's training cases, validation = its validation
    cases; ``val_fraction`` and ``seed`` then do not split).
    """

    epochs: int = 200
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    bce_weight_start: float = 0.6
    dice_weight_start: float = 0.4
    bce_weight_end: float = 0.1
    dice_weight_end: float = 0.9
    pos_weight: float | str = "auto"
    recon_weight: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    amp: bool = False
    precision: str | None = None
    cudnn_benchmark: bool = True
    num_workers: int = 0
    crop_size: tuple[int, int, int] | None = None
    crop_foreground: float = 0.5
    memory_format: str = "contiguous"
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    nnunet_fold: int = 0

    def __post_init__(self) -> None:
        if self.nnunet_fold < 0:
            raise ConfigError(f"train.nnunet_fold must be >= 0, got {self.nnunet_fold}")
        if self.num_workers < 0:
            raise ConfigError(f"train.num_workers must be >= 0, got {self.num_workers}")
        if self.precision is not None and self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise ConfigError(f"train.precision must be fp32, bf16, fp16 or auto, got {self.precision!r}")
        if self.crop_size is not None and any(c < 16 or c % 16 for c in self.crop_size):
            raise ConfigError(f"train.crop_size must be 3 multiples of 16 or null, got {self.crop_size!r}")
        if not 0.0 <= self.crop_foreground <= 1.0:
            raise ConfigError(f"train.crop_foreground must be in [0, 1], got {self.crop_foreground}")
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"train.memory_format must be one of {MEMORY_FORMATS}, got {self.memory_format!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise ConfigError(f"train.warmup_epochs must be in [0, epochs), got {self.warmup_epochs}")
        start = self.bce_weight_start + self.dice_weight_start
        end = self.bce_weight_end + self.dice_weight_end
        if abs(start - end) > 1e-9:
            raise ConfigError(
                "BCE and Dice weights must move by equal and opposite amounts: "
                f"start sums to {start}, end sums to {end}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.batch_size < 1 or self.epochs < 1:
            raise ConfigError("epochs and batch_size must be >= 1")
        if isinstance(self.pos_weight, str):
            if self.pos_weight != "auto":
                raise ConfigError(f"pos_weight must be 'auto' or a positive number, got {self.pos_weight!r}")
        elif not self.pos_weight > 0:
            raise ConfigError(f"pos_weight must be 'auto' or a positive number, got {self.pos_weight!r}")


#: Training tensor layouts and learning-rate schedules (``SegTrainConfig``).
MEMORY_FORMATS = ("contiguous", "channels_last")
LR_SCHEDULES = ("constant", "poly")

#: Values of ``InferenceConfig.precision``.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class InferenceConfig:
    """How a scan becomes a mask (``predict``, per-epoch validation and the experiment alike).

    Attributes:
        threshold: probability threshold.
        largest_component: keep the largest connected component on each patient side.
        tta_flip: average over lateral flips.
        memory_budget_mb: activation memory the network may use; 0 (default) means a share of the
            memory actually available when predicting (see
            :func:`kidneyssl.inference.sliding_window.resolve_memory_budget_mb`).
        sw_roi_size: the smallest sliding-window size (z, y, x) (the fallback when halves do not
            fit); the window is grown towards the half volume as far as the budget allows.
        sw_overlap: sliding-window overlap fraction.
        half_context_mm: image context each half takes across the split plane (mm).
        precision: ``auto`` (bfloat16 where a probe measures it faster on this machine and the
            checkpoint's bf16 masks agree with float32's: :mod:`kidneyssl.inference.precision`;
            else float32), ``fp32`` or ``bf16``. Each checkpoint is checked on its own, so models
            compared in one experiment may be scored in different precisions; ``fp32`` scores
            them all alike.
    """

    threshold: float = 0.5
    largest_component: bool = True
    tta_flip: bool = False
    memory_budget_mb: int = 0
    sw_roi_size: tuple[int, int, int] = (64, 128, 128)
    sw_overlap: float = 0.25
    half_context_mm: float = 32.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"inference.threshold must be in [0, 1], got {self.threshold}")
        if self.memory_budget_mb < 0:
            raise ConfigError(f"inference.memory_budget_mb must be >= 0, got {self.memory_budget_mb}")
        if len(self.sw_roi_size) != 3 or any(r < 16 or r % 16 for r in self.sw_roi_size):
            raise ConfigError(f"inference.sw_roi_size must be 3 multiples of 16, got {self.sw_roi_size!r}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ConfigError(f"inference.sw_overlap must be in [0, 1), got {self.sw_overlap}")
        if self.half_context_mm < 0:
            raise ConfigError(f"inference.half_context_mm must be >= 0, got {self.half_context_mm}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"inference.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")


@dataclass(frozen=True)
class ProtocolConfig:
    """The experiment's protocol: splits, seeds and which models are compared (paper, section 3.3).

    Attributes:
        seeds: one full run (pretraining, MwS per proxy variant, MwoS) per seed; the seed sets
            initialisation, pair sampling and data order (``pretrain.seed`` and ``train.seed``).
        split_seed: seed of the train/validation/test split, shared by every seed's runs.
        test_fraction: fraction of the annotated cases held out as the TEST part: never read by
            training, pretraining or any choice, scored once at the end (ignored when the
            experiment is given a separate test dataset).
        proxy_variants: proxy inputs to pretrain with, one MwS per variant (see
            :attr:`PretrainConfig.proxy_input`); the methods ``side-<variant>`` when ``methods``
            is empty.
        methods: pretraining methods to compare with scratch, one fine-tuned model each:
            ``side-region``, ``side-masked`` (the paper's proxy on either input) and the other
            registered methods (``mae``, ``genesis``); empty: ``side-<v>`` for each proxy variant.
        init_parts: what a pretrained network gives its fine-tuned model: ``encoder`` (the
            paper's MwS) or ``encoder+decoder`` (for methods that pretrain a decoder; the side
            proxy gives its encoder either way).
        min_seeds_for_verdict, min_cases_for_verdict: the report states a direction ("better",
            "worse") for a comparison only with at least this many seeds and paired cases (and
            an interval that excludes 0 after the Holm correction); below, it prints the numbers
            and says they are too few (:func:`kidneyssl.reporting.statistics.compare_methods`).
        label_fractions, label_counts: label budgets (issue 22): every model is also fine-tuned
            on nested subsets of the training cases, ``round(f x training cases)`` for each
            fraction and ``n`` for each count (:mod:`kidneyssl.training.label_budget`); the full
            training set is always one of the budgets. Empty (default): the full set only.
    """

    seeds: tuple[int, ...] = (0,)
    split_seed: int = 0
    test_fraction: float = 0.2
    proxy_variants: tuple[str, ...] = PROXY_INPUTS
    methods: tuple[str, ...] = ()
    init_parts: str = "encoder"
    min_seeds_for_verdict: int = 2
    min_cases_for_verdict: int = 10
    label_fractions: tuple[float, ...] = ()
    label_counts: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        bad_f = [f for f in self.label_fractions if not 0.0 < f <= 1.0]
        if bad_f or len(set(self.label_fractions)) != len(self.label_fractions):
            raise ConfigError(f"protocol.label_fractions must be distinct numbers in (0, 1], got {self.label_fractions!r}")
        if any(n < 1 for n in self.label_counts) or len(set(self.label_counts)) != len(self.label_counts):
            raise ConfigError(f"protocol.label_counts must be distinct integers >= 1, got {self.label_counts!r}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"protocol.seeds must be distinct and non-empty, got {self.seeds!r}")
        for name in ("min_seeds_for_verdict", "min_cases_for_verdict"):
            if getattr(self, name) < 1:
                raise ConfigError(f"protocol.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ConfigError(f"protocol.test_fraction must be in [0, 1), got {self.test_fraction}")
        bad = [v for v in self.proxy_variants if v not in PROXY_INPUTS]
        if bad or len(set(self.proxy_variants)) != len(self.proxy_variants):
            raise ConfigError(f"protocol.proxy_variants must be distinct values of {PROXY_INPUTS}, "
                              f"got {self.proxy_variants!r}")
        if len(set(self.methods)) != len(self.methods) or any(not m for m in self.methods):
            raise ConfigError(f"protocol.methods must be distinct method names, got {self.methods!r}")
        if self.init_parts not in ("encoder", "encoder+decoder"):
            raise ConfigError(f"protocol.init_parts must be 'encoder' or 'encoder+decoder', got {self.init_parts!r}")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; saved as ``config.yaml`` in every run folder.

    ``methods`` holds each pretraining method's own settings by method name (``methods.mae``,
    ``methods.genesis``); each method's module defines and validates its section, so adding a
    method adds no field here. The side proxy's settings are ``pretrain`` (where they always were);
    ``pretrain.seed`` and ``pretrain.val_fraction`` apply to every method.
    """

    name: str = "paper"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    synth: dict[str, Any] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)


T = TypeVar("T")


def config_to_dict(cfg: Any) -> Any:
    """A JSON/YAML-friendly dict (tuples become lists) of a config dataclass."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: config_to_dict(getattr(cfg, f.name)) for f in fields(cfg)}
    if isinstance(cfg, (tuple, list)):
        return [config_to_dict(v) for v in cfg]
    if isinstance(cfg, dict):
        return {k: config_to_dict(v) for k, v in cfg.items()}
    return cfg


_TYPE_NAMES = {bool: "true/false", int: "an integer", float: "a number", str: "a string"}


def _convert(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to the annotated type ``tp`` (from the dataclass's type hints).

    Handles the types configs use: bool, int, float (finite only: NaN and infinities are
    refused), str, ``X | Y`` unions, fixed-length
    ``tuple[A, B, C]`` and variable ``tuple[A, ...]``, ``dict[...]`` and nested config dataclasses.
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _convert(value, option, where)
            except ConfigError:
                continue
        names = " or ".join(_TYPE_NAMES.get(t, "null" if t is type(None) else getattr(t, "__name__", str(t)))
                            for t in typing.get_args(tp))
        raise ConfigError(f"{where}: expected {names}, got {value!r}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return config_from_dict(tp, value, where)
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            item_types = [args[0]] * len(value)
        else:
            if len(value) != len(args):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            item_types = list(args)
        return tuple(_convert(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, item_types)))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if tp is bool:
        ok = isinstance(value, bool)
    elif tp is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        if ok and not math.isfinite(value):  # YAML .nan/.inf, JSON NaN/Infinity
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    elif tp is str:
        ok = isinstance(value, str)
    else:  # pragma: no cover - a config field of a type this function does not know
        raise ConfigError(f"{where}: unsupported config type {tp!r}")
    if not ok:
        raise ConfigError(f"{where}: expected {_TYPE_NAMES[tp]}, got {value!r}")
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build a config dataclass from a (partial) dict, converting each value to its field's
    annotated type; unknown keys and values of the wrong type raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    hints = _hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(known)}"
        )
    kwargs = {name: _convert(value, hints[name], f"{where}.{name}" if where else name)
              for name, value in data.items()}
    return cls(**kwargs)


def available_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    folder = resources.files("kidneyssl") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, source: str) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{source}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    return data


def load_preset(name: str) -> ExperimentConfig:
    """The shipped preset ``name`` (``paper`` or ``demo``)."""
    names = available_presets()
    if name not in names:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(names)}")
    text = (resources.files("kidneyssl") / "presets" / f"{name}.yaml").read_text()
    return config_from_dict(ExperimentConfig, _read_yaml(text, f"preset {name}"))


def load_config(path: str | Path) -> ExperimentConfig:
    """An :class:`ExperimentConfig` from a YAML or JSON file (e.g. a run folder's ``config.yaml``)."""
    path = Path(path)
    if not path.is_file():
        from kidneyssl.io.paths import describe_missing

        raise ConfigError(f"{Path(path).absolute()}: config file not found ({describe_missing(path)})")
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else _read_yaml(text, str(path))
    return config_from_dict(ExperimentConfig, data)


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse override value {text!r}: {err}") from err


def apply_overrides(cfg: ExperimentConfig, overrides: list[str] | None) -> ExperimentConfig:
    """Apply ``section.key=value`` overrides (value parsed as YAML, e.g. ``[2,3,3]``, ``true``).

    Example: ``apply_overrides(cfg, ["train.epochs=5", "preprocess.spacing_mm=[4,2,2]"])``.
    """
    if not overrides:
        return cfg
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: dict[str, Any] = data
        node_type: Any = ExperimentConfig
        for part in parts[:-1]:
            if not dataclasses.is_dataclass(node_type) and node_type is not ExperimentConfig and part not in node:
                node[part] = {}  # a free-form section (methods.mae) may be created by an override
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: no config section {part!r}")
            node = node[part]
            node_type = _hints(node_type).get(part) if isinstance(node_type, type) and dataclasses.is_dataclass(
                node_type) else None
        free_form = not dataclasses.is_dataclass(node_type)  # a dict field (e.g. synth) takes any key
        if parts[-1] not in node and not free_form:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r} (known: {sorted(node)})")
        node[parts[-1]] = _parse_scalar(raw)
    return config_from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically."""
    import yaml

    from kidneyssl.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


__all__.append("save_config")
