"""Self-describing checkpoints: a plain dict with format version, package version, kind, the full
resolved config, weights, and (for training checkpoints) optimizer, epoch, schedule and RNG state.

``predict`` needs nothing but a checkpoint: the config inside rebuilds the model and the
preprocessing. Writes are atomic (temp file + rename).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "strip_wrapper_prefixes"]

#: Bump when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT = 1
KINDS = ("siamese", "segmentation")


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove DistributedDataParallel (``module.``) and torch.compile (``_orig_mod.``) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def save_checkpoint(path: str | Path, *, kind: str, config: dict[str, Any], model_state: dict[str, Any],
                    **extra: Any) -> None:
    """Save a checkpoint atomically.

    Args:
        path: target file (``.pt``).
        kind: ``"siamese"`` or ``"segmentation"``.
        config: ``config_to_dict(ExperimentConfig)`` of the run.
        model_state: the model's ``state_dict()`` (wrapper prefixes are stripped).
        **extra: anything else to store (``optimizer``, ``epoch``, ``rng``, ``metrics``, ...).
    """
    import torch

    from kidneyssl import __version__
    from kidneyssl.io.atomic import atomic_path

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    payload = {
        "format_version": CHECKPOINT_FORMAT,
        "kidneyssl_version": __version__,
        "kind": kind,
        "config": config,
        "model_state": strip_wrapper_prefixes(model_state),
        **extra,
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing or unreadable, is not a kidneyssl checkpoint, has
            another format version, or is of another ``kind`` than requested.
    """
    import torch

    from kidneyssl.errors import CheckpointError

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or "format_version" not in payload or "model_state" not in payload:
        raise CheckpointError(f"{path}: not a kidneyssl checkpoint (no format_version/model_state)")
    if payload["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} (kidneyssl "
            f"{payload.get('kidneyssl_version', '?')}); this kidneyssl reads format {CHECKPOINT_FORMAT}. "
            "Use the kidneyssl version that wrote it, or retrain."
        )
    if kind is not None and payload.get("kind") != kind:
        raise CheckpointError(f"{path}: expected a {kind} checkpoint, found a {payload.get('kind')!r} one")
    return payload
