"""Weights into networks, with one key/shape report: the pretrained siamese encoder into the
segmentation network (paper, section 2: "one of the branches of the siamese network is used as an
encoder for the main kidney segmentation task"; the decoder and reconstruction branch keep their
fresh initialisation), and a whole segmentation network from its checkpoint (:func:`load_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from kidneyssl.errors import CheckpointError
from kidneyssl.io.checkpoint import load_checkpoint, strip_wrapper_prefixes

__all__ = ["TransferReport", "KeyReport", "compare_keys", "load_encoder", "load_parts", "load_model",
           "ENCODER_PREFIX"]

log = logging.getLogger(__name__)

#: State-dict prefix of the shared encoder in both networks.
ENCODER_PREFIX = "encoder."


@dataclass(frozen=True)
class TransferReport:
    """Keys that were loaded, that the model has but the source lacks (``missing``), and that the
    source has but the model lacks (``unexpected``) (:func:`load_encoder`: without the
    ``encoder.`` prefix; :func:`load_parts`: full keys)."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


@dataclass(frozen=True)
class KeyReport:
    """How a state dict fits a model: keys the model has but the source lacks (``missing``), keys
    the source has but the model lacks (``unexpected``), and common keys whose shapes differ."""

    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatch: tuple[str, ...]
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.shape_mismatch)

    def describe(self, limit: int = 5) -> str:
        """``"2 missing: a, b; 1 shape mismatch: c (checkpoint (3,) vs model (4,))"``."""
        parts = []
        for name, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                           ("shape mismatch", self.shape_mismatch)):
            if keys:
                shown = ", ".join(f"{k} (checkpoint {self.shapes[k][0]} vs model {self.shapes[k][1]})"
                                  if name == "shape mismatch" else k for k in keys[:limit])
                parts.append(f"{len(keys)} {name}: {shown}{', ...' if len(keys) > limit else ''}")
        return "; ".join(parts)


def compare_keys(expected: Mapping[str, Any], incoming: Mapping[str, Any]) -> KeyReport:
    """The :class:`KeyReport` of ``incoming`` tensors against a model's ``expected`` state dict
    (missing keys in the model's order)."""
    missing = tuple(k for k in expected if k not in incoming)
    unexpected = tuple(k for k in incoming if k not in expected)
    shapes = {k: (tuple(getattr(incoming[k], "shape", ())), tuple(expected[k].shape))
              for k in expected if k in incoming}
    wrong = tuple(k for k, (a, b) in shapes.items() if a != b)
    return KeyReport(missing, unexpected, wrong, {k: shapes[k] for k in wrong})


def _state_from(source: Mapping[str, Any] | str | Path) -> tuple[dict[str, Tensor], str]:
    if isinstance(source, (str, Path)):
        payload = load_checkpoint(source)
        return payload["model_state"], str(source)
    if not isinstance(source, Mapping):
        raise CheckpointError(f"expected a state dict, a checkpoint dict or a path, got {type(source).__name__}")
    if "model_state" in source and isinstance(source["model_state"], Mapping):
        return dict(source["model_state"]), "checkpoint"
    return dict(source), "state dict"


def load_encoder(seg_model: nn.Module, source: Mapping[str, Any] | str | Path) -> TransferReport:
    """Copy ``encoder.*`` weights from a pretraining state dict or checkpoint into
    ``seg_model.encoder`` (the paper's MwS initialisation).

    Args:
        seg_model: a registered segmentation network (or anything with ``.encoder``; a
            DDP/compile wrapper is unwrapped).
        source: a state dict, a checkpoint dict (its ``model_state`` is used) or a checkpoint path.
            ``module.``/``_orig_mod.`` prefixes are stripped; keys outside ``encoder.`` (the
            siamese projection head, a restoration decoder) are ignored.

    Returns:
        :class:`TransferReport` (keys without the ``encoder.`` prefix); missing/unexpected keys
        are also logged as warnings.

    Raises:
        CheckpointError: no encoder key matched, or a matching key has another shape (named).
    """
    report = load_parts(seg_model, source, (ENCODER_PREFIX,))
    n = len(ENCODER_PREFIX)
    return TransferReport(tuple(k[n:] for k in report.loaded), tuple(k[n:] for k in report.missing),
                          tuple(k[n:] for k in report.unexpected))


def load_parts(model: nn.Module, source: Mapping[str, Any] | str | Path, prefixes: Sequence[str],
               exclude: Sequence[str] = ()) -> TransferReport:
    """Copy the weights under ``prefixes`` (e.g. ``("encoder.", "decoder.ups.")``), except those
    under ``exclude`` (e.g. the output layer), from ``source`` into ``model``.

    Keys are compared on the model's state dict: ``missing`` are the model's keys under the
    prefixes that the source lacks, ``unexpected`` the source's keys under the prefixes that the
    model lacks; both are logged. Everything else of the model keeps its initialisation.

    Raises:
        CheckpointError: no key matched, or a matching key has another shape (named with both shapes).
    """
    net: Any = getattr(model, "module", model)
    net = getattr(net, "_orig_mod", net)
    if ENCODER_PREFIX in prefixes and not hasattr(net, "encoder"):
        raise CheckpointError(f"{type(net).__name__} has no `encoder` to load weights into")
    state, where = _state_from(source)
    state = strip_wrapper_prefixes(state)

    def wanted(key: str) -> bool:
        return key.startswith(tuple(prefixes)) and not key.startswith(tuple(exclude))

    incoming = {k: v for k, v in state.items() if wanted(k)}
    target = {k: v for k, v in net.state_dict().items() if wanted(k)}
    matched = [k for k in target if k in incoming]
    if not matched:
        parts = " and ".join(p.rstrip(".").split(".")[0] for p in prefixes)
        raise CheckpointError(
            f"{where}: no {parts} weights found (no key under {', '.join(repr(p) for p in prefixes)} matches "
            f"the model; first keys of the source: {sorted(state)[:3]})")
    keys = compare_keys(target, incoming)
    if keys.shape_mismatch:
        raise CheckpointError(f"{where}: weights of another shape (pretrained with another model config?): "
                              f"{keys.describe()}")
    net.load_state_dict({k: incoming[k] for k in matched}, strict=False)
    report = TransferReport(tuple(matched), tuple(keys.missing), tuple(keys.unexpected))
    if report.missing or report.unexpected:
        log.warning("transfer from %s: %d missing, %d unexpected keys (e.g. %s)", where,
                    len(report.missing), len(report.unexpected), (report.missing + report.unexpected)[:3])
    log.info("loaded %d tensors (%s) from %s", len(report.loaded), ", ".join(p.rstrip(".") for p in prefixes), where)
    return report


def load_model(checkpoint_path: str | Path, device: Any = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild the segmentation network of a checkpoint, in ``eval()`` mode on ``device``.

    The network comes from the checkpoint alone: its ``architecture`` entry (name and constructor
    arguments; checkpoints written before networks had names hold the paper's network). The
    reconstruction branch (training only) is not built; its weights are ignored.

    Returns:
        ``(model, ExperimentConfig of the checkpoint)``.

    Raises:
        CheckpointError: missing/unreadable file, another checkpoint format, a pretraining
            checkpoint, a config this version cannot read, or weights that do not fit the
            architecture (the message names the offending keys, :meth:`KeyReport.describe`).
    """
    import torch

    from kidneyssl.config import ConfigError, ExperimentConfig, config_from_dict
    from kidneyssl.models.registry import build_network, spec_from_checkpoint

    path = Path(checkpoint_path)
    payload = load_checkpoint(path, kind="segmentation")
    version = payload.get("kidneyssl_version", "?")
    try:
        cfg = config_from_dict(ExperimentConfig, payload["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: its config cannot be read by this kidneyssl (written by kidneyssl "
                              f"{version}): {err}") from None
    spec = spec_from_checkpoint(payload, str(path))
    model = build_network(spec, reconstruction=False)
    state = {k: v for k, v in payload["model_state"].items() if not k.startswith("reconstruction.")}
    keys = compare_keys(model.state_dict(), state)
    if not keys.ok:
        raise CheckpointError(f"{path}: weights do not fit the {spec.name} architecture it names (kidneyssl "
                              f"{version}): " + keys.describe())
    model.load_state_dict(state, strict=True)
    model.eval().to(torch.device(device))
    return model, cfg
