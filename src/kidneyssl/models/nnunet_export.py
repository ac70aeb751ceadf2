"""Weights nnU-Net loads: a kidneyssl checkpoint of an nnU-Net network (``plain-unet``,
``resenc-unet``) written as ``{"network_weights": state_dict}`` with nnU-Net's key names, for
``nnUNetv2_train DATASET CONFIGURATION FOLD -pretrained_weights FILE``.

nnU-Net 2.8.1's loader (``nnunetv2.run.load_pretrained_weights.load_pretrained_weights``) requires
every key of its network except the segmentation heads (``.seg_layers.``) to be in the file with the
same shape, then copies them all (the heads keep nnU-Net's initialisation). It has no encoder-only
path (nnssl fine-tunes encoder-only weights through its own adaptation code). So:

- a segmentation checkpoint exports its whole network;
- a pretraining checkpoint exports what its method pretrained (the side proxy: the encoder; a
  restoration method: encoder and decoder) inside the full network, the rest (the side proxy's
  decoder) freshly initialised by nnU-Net's own initialisation (``InitWeights_He``), the same
  initialisation ``nnUNetv2_train`` gives a network from scratch. :class:`ExportReport` and the
  file's ``kidneyssl_export`` entry say which parts are pretrained and which are fresh.

Before writing, the weights are checked against the network nnU-Net builds from the plans
(``plans``, default the plans the checkpoint was built from, when that file still exists) exactly as
nnU-Net's loader checks them; a missing key or another shape is a one-line
:class:`~kidneyssl.errors.CheckpointError` naming the key, both shapes and the plans file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from kidneyssl.errors import CheckpointError, KidneySSLError

__all__ = ["ExportReport", "export_nnunet_weights", "check_nnunet_compatible", "NNUNET_SKIPPED"]

log = logging.getLogger(__name__)

#: Key fragment nnU-Net's ``load_pretrained_weights`` neither requires nor loads.
NNUNET_SKIPPED = ".seg_layers."


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_nnunet_weights` wrote.

    Attributes:
        out: the written file.
        architecture: the network's registry name.
        tensors: number of tensors in ``network_weights``.
        pretrained: state-dict prefixes holding the checkpoint's trained weights.
        fresh: prefixes holding nnU-Net's fresh initialisation (e.g. the side proxy's decoder).
        checked_against: the plans file (and configuration) the keys and shapes were checked
            against, or ``None`` when no plans file was available.
    """

    out: Path
    architecture: str
    tensors: int
    pretrained: tuple[str, ...]
    fresh: tuple[str, ...] = ()
    checked_against: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def check_nnunet_compatible(weights: Mapping[str, Any], network_state: Mapping[str, Any], where: str) -> None:
    """nnU-Net's own acceptance rule: every key of ``network_state`` outside the segmentation
    heads is in ``weights`` with the same shape.

    Args:
        weights: the state dict to be loaded.
        network_state: the state dict of the network nnU-Net builds.
        where: the plans file and configuration, for the message.

    Raises:
        CheckpointError: one line naming the first missing key, or the first key whose shapes
            differ with both shapes.
    """
    for key, value in network_state.items():
        if NNUNET_SKIPPED in key:
            continue
        if key not in weights:
            raise CheckpointError(f"key {key} (shape {tuple(value.shape)} in the network of {where}) is missing "
                                  "from the weights: they are not this network's")
        if tuple(weights[key].shape) != tuple(value.shape):
            raise CheckpointError(f"key {key}: shape {tuple(weights[key].shape)} in the weights vs "
                                  f"{tuple(value.shape)} in the network of {where}")


def _pretrained_prefixes(payload: Mapping[str, Any]) -> list[str]:
    """The prefixes a pretraining checkpoint's method trained (its ``transfer`` entry; the side
    proxy and older checkpoints: the encoder). Mirrors the segmentation task's reading."""
    parts = payload.get("transfer")
    if isinstance(parts, Mapping) and parts.get("encoder"):
        return [str(p) for prefixes in parts.values() for p in prefixes]
    return ["encoder."]


def export_nnunet_weights(checkpoint: str | Path, out: str | Path, *, plans: str | Path | None = None,
                          configuration: str | None = None, force: bool = False) -> ExportReport:
    """Write the weights of a kidneyssl checkpoint for nnU-Net's ``-pretrained_weights``.

    Args:
        checkpoint: a segmentation or pretraining checkpoint (``RUN/best.pt``) of an nnU-Net
            network.
        out: the file to write (``pretrained.pth``).
        plans: the plans file of the nnU-Net training that will load the weights (default: the
            one the checkpoint was built from, if it still exists).
        configuration: its configuration (default: the checkpoint's).
        force: replace an existing ``out``.

    Raises:
        CheckpointError: not an nnU-Net network, or weights that do not fit the network (key and
            shapes named).
        DataError: ``out`` exists (without ``force``) or is the checkpoint.
        MissingExtraError: nnU-Net is not installed.
    """
    import torch

    from kidneyssl.io.atomic import atomic_path
    from kidneyssl.io.checkpoint import load_checkpoint, strip_wrapper_prefixes
    from kidneyssl.io.outputs import check_outputs
    from kidneyssl.models.nnunet import NNUNET_ARCHITECTURES, build_plans_network, plans_network, require_nnunet
    from kidneyssl.models.registry import build_network, spec_from_checkpoint
    from kidneyssl.models.transfer import compare_keys

    checkpoint, out = Path(checkpoint), Path(out)
    check_outputs([out], [checkpoint], is_own=lambda _: False, force=force, what="output file",
                  inputs_name="the checkpoint")
    payload = load_checkpoint(checkpoint)
    spec = spec_from_checkpoint(payload, str(checkpoint))
    if spec.name not in NNUNET_ARCHITECTURES:
        raise CheckpointError(f"{checkpoint}: holds a {spec.name} network; only nnU-Net's networks "
                              f"({', '.join(NNUNET_ARCHITECTURES)}) can be loaded by nnU-Net")
    require_nnunet("exporting weights to nnU-Net")
    network = build_network(spec)
    state = strip_wrapper_prefixes(dict(payload["model_state"]))
    fresh: tuple[str, ...] = ()
    if payload.get("kind") == "segmentation":
        keys = compare_keys(network.state_dict(), state)
        if not keys.ok:
            raise CheckpointError(f"{checkpoint}: weights do not fit the {spec.name} network it names: {keys.describe()}")
        network.load_state_dict(state, strict=True)
        pretrained: tuple[str, ...] = ("encoder.", "decoder.")
    else:
        prefixes = _pretrained_prefixes(payload)
        target = {k: v for k, v in network.state_dict().items() if k.startswith(tuple(prefixes))}
        incoming = {k: v for k, v in state.items() if k.startswith(tuple(prefixes))}
        keys = compare_keys(target, incoming)
        if keys.missing or keys.shape_mismatch:
            raise CheckpointError(f"{checkpoint}: pretrained weights do not fit the {spec.name} network it names: "
                                  f"{keys.describe()}")
        network.load_state_dict(incoming, strict=False)
        pretrained = tuple(prefixes)
        fresh = tuple(p for p in ("decoder.",) if p not in prefixes and not any(q.startswith(p) for q in prefixes))
    weights = {k: v.detach().to("cpu").clone() for k, v in network.state_dict().items()}

    plans_file = Path(plans) if plans is not None else Path(str(spec.args.get("plans_file", "")))
    config_name = configuration or str(spec.args.get("configuration", "3d_fullres"))
    checked: str | None = None
    if plans is not None or plans_file.is_file():
        where = f"{plans_file} ({config_name})"
        try:
            args = {**plans_network(plans_file, config_name), "input_channels": spec.args.get("input_channels", 1)}
        except KidneySSLError as err:
            raise CheckpointError(f"cannot check the weights against {where}: {err}") from None
        reference = build_plans_network(args, num_classes=1)
        check_nnunet_compatible(weights, reference.state_dict(), where)
        checked = where
    else:
        log.warning("%s: the plans file it was built from (%s) is gone; the weights were not checked against "
                    "nnU-Net's network (give the plans of the nnU-Net training to check them)", checkpoint, plans_file)
    record = {"source": str(checkpoint.resolve()), "architecture": spec.name, "kind": payload.get("kind"),
              "method": payload.get("method"), "pretrained": list(pretrained), "fresh": list(fresh),
              "plans_file": str(spec.args.get("plans_file")), "configuration": spec.args.get("configuration"),
              "nnunet_version_verified": spec.args.get("nnunet_version")}
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=out.suffix or ".pth") as tmp:
        torch.save({"network_weights": weights, "kidneyssl_export": record}, tmp)
    notes: tuple[str, ...] = ()
    if fresh:
        notes = (f"{', '.join(p.rstrip('.') for p in fresh)} freshly initialised (nnU-Net's initialisation): "
                 f"the {payload.get('method') or 'pretraining'} method pretrains {', '.join(p.rstrip('.') for p in pretrained)} only",)
    report = ExportReport(out, spec.name, len(weights), pretrained, fresh, checked, notes)
    log.info("wrote %d tensors for nnU-Net to %s%s", len(weights), out, f" ({notes[0]})" if notes else "")
    return report
