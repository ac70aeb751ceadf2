"""Self-describing checkpoints: a plain dict with format version, package version, kind, the full
resolved config, weights, and (for training checkpoints) optimizer, epoch, schedule and RNG state.

``predict`` needs nothing but a checkpoint: the config inside rebuilds the model and the
preprocessing. Writes are atomic (temp file + rename).

Checkpoints are shared between people, so they are read with ``torch.load(weights_only=True)``:
only tensors and plain containers (dict, list, tuple, str, numbers) are unpickled, and a file that
asks for anything else (e.g. a ``__reduce__`` payload) is refused before any of it runs. We write
nothing else (numpy scalars are turned into Python numbers on save; RNG states are tensors, see
:func:`kidneyssl.training.seeding.capture_rng_state`). Checkpoints written before stored NumPy
arrays and scalars in their RNG state: these few NumPy types (data, never code) are accepted too.
Weights that are NaN or infinite are refused at load time.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "strip_wrapper_prefixes",
           "check_finite_weights"]

#: Bump when the checkpoint layout changes incompatibly.
CHECKPOINT_FORMAT = 1
KINDS = ("pretrain", "segmentation")
#: Kinds written by earlier versions, and what they are now (the side proxy's "siamese" runs).
LEGACY_KINDS = {"siamese": "pretrain"}


def strip_wrapper_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    """Remove DistributedDataParallel (``module.``) and torch.compile (``_orig_mod.``) prefixes."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays turned into Python numbers/tensors (weights_only-safe)."""
    import numpy as np
    import torch

    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    return value


def _legacy_numpy_globals() -> list[Any]:
    """The NumPy types older checkpoints hold in their RNG state: array and scalar data only."""
    import numpy as np

    core: Any = getattr(np, "_core", None) or np.core  # numpy >= 2, else 1.x
    multiarray = core.multiarray
    dtypes = [type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64, np.float32, np.int32)]
    return [multiarray._reconstruct, multiarray.scalar, np.ndarray, np.dtype, *dtypes]


def check_finite_weights(path: str | Path, model_state: dict[str, Any]) -> None:
    """Raise CheckpointError naming ``path`` and a key when a floating tensor holds NaN or inf."""
    import torch

    from kidneyssl.errors import CheckpointError

    for key, value in model_state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise CheckpointError(
                    f"{Path(path).absolute()}: weights are not finite: {key} holds {bad} NaN/inf "
                    f"value(s) of {value.numel()} (a diverged run?); use an earlier checkpoint")


def _unpickling_failure(err: BaseException) -> str:
    """One line for a failed ``torch.load``: what weights_only refused, or the last error line."""
    text = str(err)
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if "weights_only" in text or "WeightsUnpickler" in text:
        match = re.search(r"GLOBAL ([\w.]+)", text)
        if match:
            what = f"GLOBAL {match.group(1)}"
        else:
            after = text.split("WeightsUnpickler error:", 1)[-1].strip().splitlines()
            what = after[0].strip() if after and "WeightsUnpickler error:" in text else "its content"
        return (f"refused by the safe (weights_only) unpickler: {what}; a checkpoint may only "
                "hold tensors and plain containers, and nothing in it was run")
    return f"{type(err).__name__}: {lines[-1][:200] if lines else ''}"


def save_checkpoint(path: str | Path, *, kind: str, config: dict[str, Any], model_state: dict[str, Any],
                    **extra: Any) -> None:
    """Save a checkpoint atomically.

    Args:
        path: target file (``.pt``).
        kind: ``"pretrain"`` or ``"segmentation"``.
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
        **_plain(extra),
    }
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None, map_location: str = "cpu") -> dict[str, Any]:
    """Load and validate a checkpoint written by :func:`save_checkpoint`.

    The file is unpickled with ``weights_only=True``: tensors and plain containers only, so a
    file carrying code is refused before anything in it runs.

    Raises:
        CheckpointError: the file is missing or unreadable, asks to unpickle anything but tensors
            and plain containers, is not a kidneyssl checkpoint, has another format version, is
            of another ``kind`` than requested, or holds NaN/inf weights. Messages give the
            absolute path.
    """
    import torch

    from kidneyssl.errors import CheckpointError
    from kidneyssl.io.paths import describe_missing

    path = Path(path).absolute()
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found ({describe_missing(path)})")
    try:
        with torch.serialization.safe_globals(_legacy_numpy_globals()), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's multi-line pickle-protocol warnings
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the same to the user
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_unpickling_failure(err)})") from None
    if not isinstance(payload, dict) or "format_version" not in payload or "model_state" not in payload:
        raise CheckpointError(f"{path}: not a kidneyssl checkpoint (no format_version/model_state)")
    if payload["format_version"] != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: checkpoint format {payload['format_version']} (kidneyssl "
            f"{payload.get('kidneyssl_version', '?')}); this kidneyssl reads format {CHECKPOINT_FORMAT}. "
            "Use the kidneyssl version that wrote it, or retrain."
        )
    found = LEGACY_KINDS.get(str(payload.get("kind")), payload.get("kind"))
    if kind is not None and found != LEGACY_KINDS.get(kind, kind):
        raise CheckpointError(f"{path}: expected a {kind} checkpoint, found a {payload.get('kind')!r} one")
    if not isinstance(payload["model_state"], dict):
        raise CheckpointError(f"{path}: model_state is a {type(payload['model_state']).__name__}, not a dict")
    check_finite_weights(path, payload["model_state"])
    return payload
