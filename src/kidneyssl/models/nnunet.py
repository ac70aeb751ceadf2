"""nnU-Net's networks: ``plain-unet`` (``PlainConvUNet``) and ``resenc-unet``
(``ResidualEncoderUNet``), built by MIC-DKFZ's ``dynamic-network-architectures`` from an nnU-Net
plans file exactly as ``nnUNetv2_train`` builds them (nnU-Net's ``get_network_from_plans`` with the
configuration's ``architecture.network_class_name`` and ``arch_kwargs``), behind our network
interface (:class:`~kidneyssl.models.registry.SegmentationNetwork`).

- The plans file is read once, when a run's config is resolved (:func:`plans_network`); the
  checkpoint stores the resolved class name and keyword arguments, so ``predict`` and ``export``
  rebuild the network without the plans file.
- State-dict keys are nnU-Net's own (``encoder.*``, ``decoder.*``; nnU-Net's decoder holds a
  reference to the encoder, so every encoder tensor also appears under ``decoder.encoder.*``):
  exporting to nnU-Net is writing the state dict (:mod:`kidneyssl.models.nnunet_export`). Weight
  transfer by the ``encoder.`` prefix sets the shared tensors once; ``decoder.encoder.*`` is never a
  transfer prefix.
- Output: ``out_channels`` logits (1 for our binary kidney target, sigmoid in the loss); the output
  layer is nnU-Net's ``decoder.seg_layers`` (never transferred; nnU-Net's loader skips it too).
- Deep supervision is off: our losses take one full-resolution output. nnU-Net turns it on for its
  own training; it changes no weight (every stage's ``seg_layers`` exist either way).
- ``forward`` zero-pads its input at the end of each axis up to the network's size multiple (the
  product of the strides per axis) and crops the logits back, so any input size is accepted;
  training inputs are multiples already.

Needs the optional extra ``nnunet`` (``pip install kidneyssl[nnunet]``; README: the CPU install).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from kidneyssl.config import ConfigError, ModelConfig
from kidneyssl.errors import DataError
from kidneyssl.models.registry import Architecture, require_extra

__all__ = ["NnUNetNetwork", "PLAIN_UNET", "RESENC_UNET", "NNUNET_ARCHITECTURES", "NNUNET_VERSION",
           "plans_network", "architecture_of_plans", "nnunet_model_settings", "build_plans_network", "resolve_plans_path",
           "require_nnunet"]

#: The nnU-Net release this was verified against (network building, preprocessed data, export).
NNUNET_VERSION = "2.8.1"

#: Registry name -> the network class's name in nnU-Net's plans.
NNUNET_ARCHITECTURES: Mapping[str, str] = {
    "plain-unet": "PlainConvUNet",
    "resenc-unet": "ResidualEncoderUNet",
}

#: Output layer (nnU-Net's segmentation heads) and the decoder without it.
SEG_LAYERS_PREFIX = "decoder.seg_layers."
DECODER_PREFIXES = ("decoder.stages.", "decoder.transpconvs.")


def require_nnunet(what: str) -> None:
    """Raise the one-line :class:`~kidneyssl.models.registry.MissingExtraError` unless nnU-Net's
    packages import."""
    require_extra(("dynamic_network_architectures", "nnunetv2"), "nnunet", what)


def resolve_plans_path(plans: str | Path, preprocessed: str | Path | None = None) -> Path:
    """A plans file from a path or (with ``preprocessed``, nnU-Net's dataset folder) a plans
    identifier: ``nnUNetPlans`` -> ``PREPROCESSED/nnUNetPlans.json``.

    Raises:
        DataError: no such plans file.
    """
    path = Path(plans)
    if not path.suffix == ".json" and preprocessed is not None:
        path = Path(preprocessed) / f"{plans}.json"
    if not path.is_file():
        raise DataError(path, "plans", "an nnU-Net plans file (e.g. nnUNetPlans.json)", "missing")
    return path.resolve()


def _read_plans(path: Path) -> dict[str, Any]:
    try:
        plans = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(path, "plans", "readable nnU-Net plans JSON", f"{type(err).__name__}: {err}") from None
    if not isinstance(plans, dict) or not isinstance(plans.get("configurations"), dict):
        raise DataError(path, "plans", "nnU-Net plans with 'configurations'", "none")
    return plans


def plans_network(plans_file: str | Path, configuration: str) -> dict[str, Any]:
    """The network of one configuration of a plans file, as nnU-Net's ``ConfigurationManager``
    resolves it (``inherits_from``, plans written before 2.4 included).

    Returns:
        ``{"network_class_name", "arch_kwargs", "arch_kwargs_req_import", "plans_file",
        "plans_name", "configuration"}`` (JSON-friendly).

    Raises:
        DataError: missing/unreadable plans, an unknown configuration (the known ones are named),
            or a configuration that is not 3-D.
        MissingExtraError: nnU-Net is not installed.
    """
    path = Path(plans_file)
    plans = _read_plans(path)
    if configuration not in plans["configurations"]:
        raise DataError(path, "configuration", f"one of {', '.join(sorted(plans['configurations']))}",
                        repr(configuration))
    require_nnunet("building nnU-Net's networks from a plans file")
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(plans).get_configuration(configuration)
    kwargs = json.loads(json.dumps(dict(manager.network_arch_init_kwargs)))  # tuples -> lists, a copy
    conv_op = str(kwargs.get("conv_op", ""))
    if not conv_op.endswith("Conv3d"):
        raise DataError(path, f"configuration {configuration}", "a 3-D network (conv_op Conv3d)", conv_op or "none")
    return {"network_class_name": str(manager.network_arch_class_name), "arch_kwargs": kwargs,
            "arch_kwargs_req_import": [str(k) for k in manager.network_arch_init_kwargs_req_import],
            "plans_file": str(path.resolve()), "plans_name": str(plans.get("plans_name", path.stem)),
            "configuration": configuration}


def architecture_of_plans(plans_file: str | Path, configuration: str) -> str:
    """The registry name (``plain-unet``, ``resenc-unet``) of a plans configuration's network.

    Raises:
        DataError: as :func:`plans_network`, or a network class no registered architecture builds.
    """
    info = plans_network(plans_file, configuration)
    short = info["network_class_name"].rsplit(".", 1)[-1]
    for name, cls in NNUNET_ARCHITECTURES.items():
        if cls == short:
            return name
    raise DataError(plans_file, f"configuration {configuration} network", " or ".join(NNUNET_ARCHITECTURES.values()),
                    info["network_class_name"])


def nnunet_model_settings(plans: str | Path, configuration: str = "3d_fullres", architecture: str | None = None,
                          preprocessed: str | Path | None = None) -> dict[str, str]:
    """The ``model`` settings for a network of an nnU-Net plans file: ``{"architecture",
    "nnunet_plans" (absolute path), "nnunet_configuration"}``; ``architecture`` defaults to the
    plans' network class (:func:`architecture_of_plans`); ``plans`` may be an identifier inside
    ``preprocessed`` (:func:`resolve_plans_path`).

    Raises:
        DataError: as :func:`plans_network`.
        ConfigError: ``architecture`` is not the plans' network.
    """
    path = resolve_plans_path(plans, preprocessed)
    found = architecture_of_plans(path, configuration)
    if architecture is not None and architecture != found:
        raise ConfigError(f"{path}: configuration {configuration} builds the {found} network, not {architecture}")
    return {"architecture": found, "nnunet_plans": str(path), "nnunet_configuration": configuration}


def _resolve_args(name: str, cfg: ModelConfig) -> dict[str, Any]:
    if not cfg.nnunet_plans:
        raise ConfigError(f"the {name} network is built from an nnU-Net plans file: set model.nnunet_plans "
                          "(and model.nnunet_configuration)")
    info = plans_network(cfg.nnunet_plans, cfg.nnunet_configuration)
    short = info["network_class_name"].rsplit(".", 1)[-1]
    if short != NNUNET_ARCHITECTURES[name]:
        other = [n for n, c in NNUNET_ARCHITECTURES.items() if c == short]
        raise ConfigError(f"{cfg.nnunet_plans}: configuration {cfg.nnunet_configuration} builds {short}, not "
                          f"{NNUNET_ARCHITECTURES[name]}; set model.architecture to "
                          f"{other[0] if other else 'the architecture of these plans'}")
    return {**info, "input_channels": int(cfg.in_channels), "num_classes": int(cfg.out_channels),
            "nnunet_version": NNUNET_VERSION}


def build_plans_network(args: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
    """nnU-Net's own network (the ``PlainConvUNet``/``ResidualEncoderUNet`` module, nnU-Net's
    initialisation) from :func:`plans_network`-style arguments, exactly as ``nnUNetv2_train``
    builds it (deep supervision off)."""
    require_nnunet("nnU-Net's networks")
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

    return get_network_from_plans(
        str(args["network_class_name"]), dict(args["arch_kwargs"]), list(args["arch_kwargs_req_import"]),
        int(args.get("input_channels", 1)), int(args.get("num_classes", 1) if num_classes is None else num_classes),
        allow_init=True, deep_supervision=False)


def _size_multiples(strides: Sequence[Any]) -> tuple[int, int, int]:
    """Per-axis product of the stage strides (an int stride applies to every axis)."""
    out = [1, 1, 1]
    for stride in strides:
        per_axis = [int(stride)] * 3 if isinstance(stride, int) else [int(s) for s in stride]
        out = [a * b for a, b in zip(out, per_axis)]
    return out[0], out[1], out[2]


class NnUNetNetwork(nn.Module):
    """An nnU-Net network (``PlainConvUNet``/``ResidualEncoderUNet``) with our interface; its
    ``encoder`` and ``decoder`` are nnU-Net's modules, so state-dict keys are nnU-Net's.

    ``forward(x)`` with x (B, in_channels, Z, Y, X) returns
    :class:`~kidneyssl.models.unet.SegmentationOutput` (no reconstruction branch). ``encode(x)`` is
    the encoder's skip list (bottleneck last), ``decode(features)`` the full-resolution logits.

    Args:
        network: the module nnU-Net built (:func:`build_plans_network`).
        args: the arguments it was built from (strides and widths are read from them).
    """

    #: The decoder without its output layer, and the output layer (nnU-Net's seg_layers).
    decoder_prefixes = DECODER_PREFIXES
    output_prefixes = (SEG_LAYERS_PREFIX,)

    def __init__(self, network: nn.Module, args: Mapping[str, Any]) -> None:
        super().__init__()
        self.encoder: nn.Module = network.encoder  # type: ignore[assignment]
        self.decoder: nn.Module = network.decoder  # type: ignore[assignment]
        self.decoder.deep_supervision = False  # type: ignore[assignment]  # a plain attribute of UNetDecoder
        kwargs = args["arch_kwargs"]
        self.network_class_name = str(args["network_class_name"])
        self.size_multiples = _size_multiples(kwargs["strides"])
        features = kwargs["features_per_stage"]
        self._bottleneck_channels = int(features[-1] if isinstance(features, (list, tuple)) else features)
        self.reconstruction = None

    @property
    def size_multiple(self) -> int:
        """Every spatial size should be a multiple of this (the largest per-axis stride product;
        :attr:`size_multiples` per axis); other sizes are padded by :meth:`forward`."""
        return math.lcm(*self.size_multiples)

    @property
    def bottleneck_channels(self) -> int:
        return self._bottleneck_channels

    def encode(self, x: Tensor) -> list[Tensor]:
        return list(self.encoder(x))

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        return self.decoder(list(features))

    def forward(self, x: Tensor) -> Any:
        import torch.nn.functional as F

        from kidneyssl.models.unet import SegmentationOutput

        shape = tuple(int(s) for s in x.shape[2:])
        pads = [(-s) % m for s, m in zip(shape, self.size_multiples)]
        if any(pads):  # F.pad lists the last axis first
            x = F.pad(x, [p for pad in reversed(pads) for p in (0, pad)])
        logits = self.decoder(self.encoder(x))
        if any(pads):
            logits = logits[..., : shape[0], : shape[1], : shape[2]]
        return SegmentationOutput(logits)


def _builder(name: str) -> Any:
    def build(args: Mapping[str, Any], *, out_channels: int | None = None, reconstruction: bool = False) -> NnUNetNetwork:
        require_nnunet(f"the {name} network")
        return NnUNetNetwork(build_plans_network(args, num_classes=out_channels), args)

    return build


#: The registry entries (``kidneyssl.models.registry``).
PLAIN_UNET = Architecture(
    name="plain-unet", resolve_args=lambda cfg: _resolve_args("plain-unet", cfg), build=_builder("plain-unet"),
    description="nnU-Net's PlainConvUNet from a plans file (model.nnunet_plans, model.nnunet_configuration)")
RESENC_UNET = Architecture(
    name="resenc-unet", resolve_args=lambda cfg: _resolve_args("resenc-unet", cfg), build=_builder("resenc-unet"),
    description="nnU-Net's ResidualEncoderUNet (ResEnc presets) from a plans file")
