"""Move the pretrained siamese encoder into the segmentation network (paper, section 2: "one of
the branches of the siamese network is used as an encoder for the main kidney segmentation task";
the decoder and reconstruction branch keep their fresh initialisation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn

from kidneyssl.errors import CheckpointError
from kidneyssl.training.checkpoint import load_checkpoint, strip_wrapper_prefixes

__all__ = ["TransferReport", "load_encoder", "ENCODER_PREFIX"]

log = logging.getLogger(__name__)

#: State-dict prefix of the shared encoder in both networks.
ENCODER_PREFIX = "encoder."


@dataclass(frozen=True)
class TransferReport:
    """Keys (without the ``encoder.`` prefix) that were loaded, that the model has but the source
    lacks (``missing``), and that the source has but the model lacks (``unexpected``)."""

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]


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
    """Copy ``encoder.*`` weights from a siamese state dict or checkpoint into ``seg_model.encoder``.

    Args:
        seg_model: a :class:`~kidneyssl.models.unet.DenseUNet3D` (or anything with ``.encoder``;
            a DDP/compile wrapper is unwrapped).
        source: a state dict, a checkpoint dict (its ``model_state`` is used) or a checkpoint path.
            ``module.``/``_orig_mod.`` prefixes are stripped; keys outside ``encoder.`` (the
            siamese projection head) are ignored.

    Returns:
        :class:`TransferReport`; missing/unexpected keys are also logged as warnings.

    Raises:
        CheckpointError: no encoder key matched, or a matching key has another shape (named).
    """
    model = getattr(seg_model, "module", seg_model)
    model = getattr(model, "_orig_mod", model)
    if not hasattr(model, "encoder"):
        raise CheckpointError(f"{type(model).__name__} has no `encoder` to load weights into")
    state, where = _state_from(source)
    state = strip_wrapper_prefixes(state)
    incoming = {k[len(ENCODER_PREFIX):]: v for k, v in state.items() if k.startswith(ENCODER_PREFIX)}
    target = model.encoder.state_dict()
    matched = sorted(set(incoming) & set(target))
    if not matched:
        raise CheckpointError(
            f"{where}: no encoder weights found (no key starting with {ENCODER_PREFIX!r} matches the "
            f"model; first keys: {sorted(state)[:3]})"
        )
    for key in matched:
        if tuple(incoming[key].shape) != tuple(target[key].shape):
            raise CheckpointError(
                f"{where}: encoder.{key} has shape {tuple(incoming[key].shape)}, the model expects "
                f"{tuple(target[key].shape)} (pretrained with another model config?)"
            )
    model.encoder.load_state_dict({k: incoming[k] for k in matched}, strict=False)
    report = TransferReport(tuple(matched), tuple(sorted(set(target) - set(incoming))),
                            tuple(sorted(set(incoming) - set(target))))
    if report.missing or report.unexpected:
        log.warning("encoder transfer from %s: %d missing, %d unexpected keys (e.g. %s)", where,
                    len(report.missing), len(report.unexpected),
                    (report.missing + report.unexpected)[:3])
    log.info("loaded %d encoder tensors from %s", len(report.loaded), where)
    return report
