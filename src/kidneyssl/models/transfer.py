"""Weights into networks, with one key/shape report: the pretrained siamese encoder into the
segmentation network (paper, section 2: "one of the branches of the siamese network is used as an
encoder for the main kidney segmentation task"; the decoder and reconstruction branch keep their
fresh initialisation), and a whole segmentation network from its checkpoint (:func:`load_model`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from torch import Tensor, nn

from kidneyssl.errors import CheckpointError
from kidneyssl.io.checkpoint import load_checkpoint, strip_wrapper_prefixes

__all__ = ["TransferReport", "KeyReport", "compare_keys", "load_encoder", "load_model", "ENCODER_PREFIX"]

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
    model: Any = getattr(seg_model, "module", seg_model)
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
    keys = compare_keys({ENCODER_PREFIX + k: v for k, v in target.items()},
                        {ENCODER_PREFIX + k: v for k, v in incoming.items()})
    if keys.shape_mismatch:
        raise CheckpointError(f"{where}: encoder weights of another shape (pretrained with another model "
                              f"config?): {keys.describe()}")
    model.encoder.load_state_dict({k: incoming[k] for k in matched}, strict=False)
    n = len(ENCODER_PREFIX)
    report = TransferReport(tuple(matched), tuple(sorted(k[n:] for k in keys.missing)),
                            tuple(sorted(k[n:] for k in keys.unexpected)))
    if report.missing or report.unexpected:
        log.warning("encoder transfer from %s: %d missing, %d unexpected keys (e.g. %s)", where,
                    len(report.missing), len(report.unexpected),
                    (report.missing + report.unexpected)[:3])
    log.info("loaded %d encoder tensors from %s", len(report.loaded), where)
    return report


def load_model(checkpoint_path: str | Path, device: Any = "cpu") -> tuple[nn.Module, Any]:
    """Rebuild the segmentation network of a checkpoint, in ``eval()`` mode on ``device``.

    The reconstruction branch (training only) is not built; its weights are ignored.

    Returns:
        ``(model, ExperimentConfig of the checkpoint)``.

    Raises:
        CheckpointError: missing/unreadable file, another checkpoint format, a siamese checkpoint,
            a config this version cannot read, or weights that do not fit the architecture (the
            message names the offending keys, :meth:`KeyReport.describe`).
    """
    import torch

    from kidneyssl.config import ConfigError, ExperimentConfig, config_from_dict
    from kidneyssl.models import build_segmentation_model

    path = Path(checkpoint_path)
    payload = load_checkpoint(path, kind="segmentation")
    version = payload.get("kidneyssl_version", "?")
    try:
        cfg = config_from_dict(ExperimentConfig, payload["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{path}: its config cannot be read by this kidneyssl (written by kidneyssl "
                              f"{version}): {err}") from None
    model = build_segmentation_model(cfg.model, reconstruction=False)
    state = {k: v for k, v in payload["model_state"].items() if not k.startswith("reconstruction.")}
    keys = compare_keys(model.state_dict(), state)
    if not keys.ok:
        raise CheckpointError(f"{path}: weights do not fit the architecture in its config (kidneyssl {version}): "
                              + keys.describe())
    model.load_state_dict(state, strict=True)
    model.eval().to(torch.device(device))
    return model, cfg
