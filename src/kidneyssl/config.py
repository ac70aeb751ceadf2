"""Frozen configuration dataclasses: the paper's defaults live here and nowhere else.

Every config is built once (by the CLI from a preset file plus ``--set key=value`` overrides),
passed down, and saved in every cache, checkpoint, run folder and report.

Presets ship in ``kidneyssl/presets/*.yaml``: ``paper`` (the paper's settings, for a GPU) and
``demo`` (coarser spacing and fewer epochs, for a laptop CPU).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, TypeVar

__all__ = [
    "PreprocessConfig",
    "ModelConfig",
    "PretrainConfig",
    "SegTrainConfig",
    "InferenceConfig",
    "PRECISIONS",
    "ExperimentConfig",
    "ConfigError",
    "config_to_dict",
    "config_from_dict",
    "load_preset",
    "load_config",
    "apply_overrides",
    "available_presets",
]


class ConfigError(ValueError):
    """A configuration file, preset or override is invalid."""


@dataclass(frozen=True)
class PreprocessConfig:
    """How a CT volume becomes network input (paper, section 3.2).

    Attributes:
        spacing_mm: target voxel spacing (z, y, x) in mm, in canonical array-axis order.
        window_hu: intensity window (low, high) in Hounsfield units; values are clipped to it.
        pad_multiple: every axis is zero-padded up to a multiple of this (the network downsamples 4x).
        keep_tumor: keep tumour (label 2) as its own class instead of merging it into kidney.
        crop_size: proxy-task kidney crop size (z, y, x) in voxels at ``spacing_mm``; multiples of 16.
        crop_mask_outside: zero everything outside the kidney mask in proxy crops (the authors'
            code did this; the paper's text passes the whole region around the kidney: default off).
        image_interpolation: ``linear`` (trilinear) or ``cubic`` for the image.
    """

    spacing_mm: tuple[float, float, float] = (3.22, 1.62, 1.62)
    window_hu: tuple[float, float] = (-80.0, 300.0)
    pad_multiple: int = 16
    keep_tumor: bool = False
    crop_size: tuple[int, int, int] = (64, 112, 112)
    crop_mask_outside: bool = False
    image_interpolation: str = "linear"

    def __post_init__(self) -> None:
        if len(self.spacing_mm) != 3 or any(s <= 0 for s in self.spacing_mm):
            raise ConfigError(f"spacing_mm must be 3 positive numbers, got {self.spacing_mm!r}")
        if len(self.window_hu) != 2 or not self.window_hu[0] < self.window_hu[1]:
            raise ConfigError(f"window_hu must be (low, high) with low < high, got {self.window_hu!r}")
        if self.pad_multiple < 1:
            raise ConfigError(f"pad_multiple must be >= 1, got {self.pad_multiple}")
        if len(self.crop_size) != 3 or any(c < 16 or c % 16 for c in self.crop_size):
            raise ConfigError(
                f"crop_size must be 3 positive multiples of 16 (the encoder downsamples 4 times), "
                f"got {self.crop_size!r}"
            )
        if self.image_interpolation not in ("linear", "cubic"):
            raise ConfigError(
                f"image_interpolation must be 'linear' or 'cubic', got {self.image_interpolation!r}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the dense encoder, the U-Net decoder, the reconstruction branch and the
    siamese head (paper, section 3.1 and Fig. 2-3).

    Attributes:
        in_channels: image channels (1 for CT).
        out_channels: segmentation channels (1: kidney vs background, sigmoid).
        init_features: channels of the input convolution.
        growth_rate: channels each densely connected layer adds.
        block_layers: densely connected layers per encoder block (paper: 2, 2, 4, 8).
        norm_groups: GroupNorm groups (clamped to divide the channel count).
        embedding_dim: siamese embedding size.
        reconstruction: build the reconstruction branch (regulariser; training only).
        gradient_checkpointing: recompute dense layers in backward to save memory.
    """

    in_channels: int = 1
    out_channels: int = 1
    init_features: int = 16
    growth_rate: int = 16
    block_layers: tuple[int, ...] = (2, 2, 4, 8)
    norm_groups: int = 8
    embedding_dim: int = 128
    reconstruction: bool = True
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if len(self.block_layers) != 4:
            raise ConfigError(
                f"block_layers must list 4 dense blocks (inputs are padded to a multiple of 16), "
                f"got {self.block_layers!r}"
            )
        for name in ("in_channels", "out_channels", "init_features", "growth_rate", "norm_groups",
                     "embedding_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class PretrainConfig:
    """Siamese proxy-task training (paper, section 2).

    Attributes:
        epochs: training epochs.
        pairs_per_epoch: training pairs drawn per epoch (balanced same/opposite side).
        val_pairs: validation pairs (fixed, drawn from validation cases only).
        batch_size: pairs per optimiser step.
        lr, weight_decay: Adam settings.
        margin: contrastive-loss margin m.
        squared_distance: use d = ||a-b||^2 (the paper's formula) instead of the Euclidean distance.
        seed: seed for pair sampling, initialisation and data order.
    """

    epochs: int = 50
    pairs_per_epoch: int = 256
    val_pairs: int = 64
    batch_size: int = 4
    lr: float = 1e-3
    weight_decay: float = 1e-2
    margin: float = 1.0
    squared_distance: bool = False
    seed: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class SegTrainConfig:
    """Segmentation training (paper, section 3.1 and 3.3).

    The loss is ``w_bce * BCE + w_dice * SoftDice (+ recon_weight * MSE)``; ``w_bce`` moves linearly
    from ``bce_weight_start`` at the first epoch to ``bce_weight_end`` at the last, and ``w_dice``
    by the equal and opposite amount.
    """

    epochs: int = 200
    batch_size: int = 1
    lr: float = 1e-3
    weight_decay: float = 1e-2
    bce_weight_start: float = 0.6
    dice_weight_start: float = 0.4
    bce_weight_end: float = 0.1
    dice_weight_end: float = 0.9
    pos_weight: float = 1.0
    recon_weight: float = 0.1
    val_fraction: float = 0.2
    seed: int = 0
    amp: bool = False
    num_workers: int = 0

    def __post_init__(self) -> None:
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


@dataclass(frozen=True)
class InferenceConfig:
    """How ``predict`` turns a scan into a mask.

    Attributes:
        memory_budget_mb: activation memory the network may use; 0 (default) means a share of the
            memory actually available when predicting (see
            :func:`kidneyssl.inference.sliding_window.resolve_memory_budget_mb`).
        sw_roi_size: the smallest sliding-window size (z, y, x); the window is grown towards the
            half volume as far as the budget allows.
        precision: ``auto`` (bfloat16 where the CPU has native bf16/AMX or on CUDA, else
            float32), ``fp32`` or ``bf16``.
    """

    threshold: float = 0.5
    largest_component: bool = True
    tta_flip: bool = False
    memory_budget_mb: int = 0
    sw_roi_size: tuple[int, int, int] = (64, 128, 128)
    sw_overlap: float = 0.25
    half_overlap_mm: float = 32.0
    precision: str = "auto"

    def __post_init__(self) -> None:
        if self.memory_budget_mb < 0:
            raise ConfigError(f"memory_budget_mb must be >= 0 (0: from available memory), "
                              f"got {self.memory_budget_mb}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if len(self.sw_roi_size) != 3 or any(r < 1 for r in self.sw_roi_size):
            raise ConfigError(f"sw_roi_size must be 3 positive ints, got {self.sw_roi_size!r}")
        if not 0.0 <= self.sw_overlap < 1.0:
            raise ConfigError(f"sw_overlap must be in [0, 1), got {self.sw_overlap}")


#: Values of ``InferenceConfig.precision``.
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class ExperimentConfig:
    """Everything a run needs; saved as ``config.yaml`` in every run folder."""

    name: str = "paper"
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: SegTrainConfig = field(default_factory=SegTrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    synth: dict[str, Any] = field(default_factory=dict)


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


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if default and len(value) != len(default) and where.split(".")[-1] != "block_layers":
            raise ConfigError(f"{where}: expected {len(default)} values, got {len(value)}")
        proto = default[0] if default else value[0] if value else 0
        return tuple(_coerce(v, proto, f"{where}[{i}]") for i, v in enumerate(value))
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def config_from_dict(cls: type[T], data: Mapping[str, Any], where: str = "") -> T:
    """Build a config dataclass from a (partial) dict; unknown keys raise :class:`ConfigError`."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{where or cls.__name__}: unknown key(s) {unknown}; known keys: {sorted(known)}"
        )
    defaults = cls()  # type: ignore[call-arg]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        default = getattr(defaults, name)
        path = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = config_from_dict(type(default), value, path)
        elif isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path}: expected a mapping, got {value!r}")
            kwargs[name] = dict(value)
        else:
            kwargs[name] = _coerce(value, default, path)
    try:
        return cls(**kwargs)  # type: ignore[call-arg]
    except TypeError as err:  # pragma: no cover - guarded by the unknown-key check
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


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
        raise ConfigError(f"{path}: config file not found")
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
        node = data
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if parts[-1] not in node and not (len(parts) > 1 and parts[0] == "synth"):
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r} (known: {sorted(node)})")
        node[parts[-1]] = _parse_scalar(raw)
    return config_from_dict(ExperimentConfig, data)


def save_config(cfg: ExperimentConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML, atomically."""
    import yaml

    from kidneyssl.io.atomic import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


__all__.append("save_config")
