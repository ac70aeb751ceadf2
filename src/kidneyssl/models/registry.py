"""Networks by name: a registry from an architecture name to the module that builds it, and the
:class:`NetworkSpec` (name + constructor arguments) every checkpoint stores, so that anything
loading a checkpoint rebuilds the network without knowing which one it is (timm's
``register_model`` + ``default_cfgs`` idea).

The registry is an immutable mapping from a name to an import path, imported on first use: an
architecture whose module needs an optional extra (nnU-Net's networks need
``dynamic-network-architectures``) costs nothing until it is asked for, and a missing extra is a
one-line error naming what to install. Adding a network is one module defining an
:class:`Architecture` and one line here.

Every network built here has the same interface (:class:`SegmentationNetwork`): ``encoder`` (an
``nn.Module`` whose output list ends with the bottleneck), ``encode``/``decode``, ``forward``
returning :class:`~kidneyssl.models.unet.SegmentationOutput`, and the facts trainers and
inference need (``size_multiple``, ``bottleneck_channels``, the state-dict prefixes of the
decoder and of the output layer).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping, Protocol, Sequence, runtime_checkable

from torch import Tensor, nn

from kidneyssl.config import ModelConfig
from kidneyssl.errors import CheckpointError, KidneySSLError

__all__ = ["ARCHITECTURES", "DEFAULT_ARCHITECTURE", "Architecture", "NetworkSpec", "SegmentationNetwork",
           "architecture", "network_spec", "build_network", "spec_from_checkpoint", "MissingExtraError",
           "require_extra"]

#: The paper's network; checkpoints written before architectures had names are this one.
DEFAULT_ARCHITECTURE = "dense-unet"

#: Architecture name -> ``"module:ATTRIBUTE"`` of its :class:`Architecture`.
ARCHITECTURES: Mapping[str, str] = MappingProxyType({
    "dense-unet": "kidneyssl.models.unet:ARCHITECTURE",
    "plain-unet": "kidneyssl.models.nnunet:PLAIN_UNET",
    "resenc-unet": "kidneyssl.models.nnunet:RESENC_UNET",
})


class MissingExtraError(KidneySSLError, ImportError):
    """An architecture (or backend) needs an optional extra that is not installed."""


def require_extra(modules: Sequence[str], extra: str, what: str) -> None:
    """Import ``modules`` (the extra's packages), or raise a one-line :class:`MissingExtraError`.

    Args:
        modules: top-level modules the extra provides (``("dynamic_network_architectures", ...)``).
        extra: the extra's name in ``pyproject.toml`` (``nnunet``).
        what: what needs it, for the message (``the plain-unet network``).
    """
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise MissingExtraError(f"{what} needs the optional extra {extra!r} ({module} is not importable: "
                                    f"{err}): pip install kidneyssl[{extra}]") from None


@runtime_checkable
class SegmentationNetwork(Protocol):
    """What trainers, transfer and inference use of a network (every registered one has it).

    Attributes:
        encoder: the encoder module; ``encoder(x)`` returns the feature list, bottleneck last.
        size_multiple: every spatial input size must be a multiple of this.
        bottleneck_channels: channels of the bottleneck (the side proxy's projection input).
        decoder_prefixes: state-dict prefixes of the segmentation decoder (without the output
            layer); transferred by encoder+decoder initialisation.
        output_prefixes: state-dict prefixes of the final output layer (never transferred: its
            channels are the task's).
    """

    encoder: nn.Module
    size_multiple: int
    bottleneck_channels: int
    decoder_prefixes: tuple[str, ...]
    output_prefixes: tuple[str, ...]

    def encode(self, x: Tensor) -> list[Tensor]: ...

    def decode(self, features: Sequence[Tensor]) -> Tensor: ...


@dataclass(frozen=True)
class Architecture:
    """How one registered network is configured and built.

    Attributes:
        name: the registry name.
        resolve_args: ``ModelConfig -> constructor arguments`` (JSON-friendly; may read files the
            config names, e.g. an nnU-Net plans file; the result is what checkpoints store).
        build: ``(args, *, out_channels, reconstruction) -> network``; ``out_channels`` overrides
            the output channels in ``args`` (a restoration pretraining outputs the image),
            ``reconstruction`` asks for a reconstruction branch where the network has one.
        description: one line for listings.
    """

    name: str
    resolve_args: Callable[[ModelConfig], dict[str, Any]]
    build: Callable[..., nn.Module]
    description: str = ""


@dataclass(frozen=True)
class NetworkSpec:
    """A network as checkpoints store it: the architecture name and its constructor arguments."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "args": dict(self.args)}


def architecture(name: str) -> Architecture:
    """The registered :class:`Architecture` called ``name``.

    Raises:
        KidneySSLError: an unknown name (the message lists the known ones).
        MissingExtraError: its module needs an extra that is not installed.
    """
    if name not in ARCHITECTURES:
        raise KidneySSLError(f"unknown architecture {name!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    module_name, _, attribute = ARCHITECTURES[name].partition(":")
    module = importlib.import_module(module_name)
    arch = getattr(module, attribute)
    if not isinstance(arch, Architecture) or arch.name != name:  # pragma: no cover - a registry typo
        raise KidneySSLError(f"registry entry {name!r} -> {ARCHITECTURES[name]} is not an Architecture "
                             "of that name")
    return arch


def network_spec(model_cfg: ModelConfig) -> NetworkSpec:
    """The :class:`NetworkSpec` of a config (resolved once, when a run starts)."""
    arch = architecture(model_cfg.architecture)
    return NetworkSpec(arch.name, arch.resolve_args(model_cfg))


def build_network(spec: NetworkSpec, *, out_channels: int | None = None, reconstruction: bool = False) -> Any:
    """Build the network of ``spec`` (fresh weights): an ``nn.Module`` with the
    :class:`SegmentationNetwork` interface."""
    return architecture(spec.name).build(dict(spec.args), out_channels=out_channels, reconstruction=reconstruction)


def spec_from_checkpoint(payload: Mapping[str, Any], source: str = "checkpoint") -> NetworkSpec:
    """The network of a checkpoint: its ``architecture`` entry, or (written before networks had
    names) the paper's network from the checkpoint's model config.

    Raises:
        CheckpointError: neither an architecture entry nor a readable model config.
    """
    entry = payload.get("architecture")
    if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
        return NetworkSpec(str(entry["name"]), dict(entry.get("args") or {}))
    from kidneyssl.config import ConfigError, config_from_dict

    model = (payload.get("config") or {}).get("model")
    try:
        cfg = config_from_dict(ModelConfig, model or {})
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{source}: names no architecture and its model config cannot be read: {err}") from None
    return network_spec(cfg)
