"""Training precision: which floating-point mode a training step runs in, and what implements it
(autocast, the grad scaler, cuDNN's autotuner). Plain values in, so a trainer passes its config
fields straight through.

Modes (values of ``train.precision``):

* ``fp32``: no autocast (cuDNN convolutions still use TF32 on GPUs that have it, PyTorch's default);
* ``bf16``: bfloat16 autocast, no grad scaler (bfloat16 has float32's exponent range). The
  networks' GroupNorm (:class:`kidneyssl.models.blocks.GroupNorm`) keeps bfloat16 activations, so a
  GN -> ReLU -> conv chain stores 2 bytes per value where PyTorch's float32 GroupNorm under
  autocast stores 4 + 4 + 2 (issue 19, item 7: float16 AMP had a higher peak than float32);
* ``fp16``: float16 autocast with a dynamic ``GradScaler`` (CUDA only);
* ``auto``: ``bf16`` on a CUDA GPU that computes bfloat16 natively (compute capability >= 8.0:
  A100, H100, RTX 30xx and later), ``fp16`` on older CUDA GPUs (bfloat16 is only emulated there,
  slower than float32), ``fp32`` elsewhere (CPU training stays float32).

The config written before this module had ``train.amp: true`` for "mixed precision on CUDA":
:func:`precision_setting` maps it to ``auto``.

Typical use in a trainer::

    requested = precision_setting(cfg.train.precision, cfg.train.amp)   # "auto", "fp32", ...
    precision = resolve_training_precision(requested, ctx.device)       # "fp32", "bf16" or "fp16"
    log.info(describe_training_precision(requested, precision, ctx.device))
    configure_cuda(ctx.device, cudnn_benchmark=True)
    scaler = build_grad_scaler(precision, ctx.device)          # None unless fp16
    with autocast_context(precision, ctx.device):
        loss = compute_loss(model, item)
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Literal, cast

from kidneyssl.config import ConfigError
from kidneyssl.errors import KidneySSLError

__all__ = ["TRAINING_PRECISIONS", "Precision", "precision_setting", "resolve_training_precision",
           "cuda_native_bf16", "autocast_context", "build_grad_scaler", "describe_training_precision",
           "configure_cuda"]

#: Values a config may give (``auto`` is resolved per device by :func:`resolve_training_precision`).
TRAINING_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: A resolved precision.
Precision = Literal["fp32", "bf16", "fp16"]


def precision_setting(precision: str | None = None, amp: bool = False) -> str:
    """The requested precision from a config's two fields.

    Args:
        precision: ``train.precision`` (one of :data:`TRAINING_PRECISIONS`, any case), or None when
            the config does not set it.
        amp: the older ``train.amp`` flag; ``True`` asks for mixed precision, i.e. ``auto`` when
            ``precision`` is unset.

    Raises:
        ConfigError: an unknown value, or ``amp`` together with ``precision: fp32``.
    """
    if precision is None:
        return "auto" if amp else "fp32"
    value = str(precision).strip().lower()
    if value not in TRAINING_PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(TRAINING_PRECISIONS)}, got {precision!r}")
    if amp and value == "fp32":
        raise ConfigError("train.amp asks for mixed precision but train.precision is fp32; set one of them")
    return value


def _device(device: Any) -> Any:
    import torch

    return device if isinstance(device, torch.device) else torch.device(str(device))


def cuda_native_bf16(device: Any) -> bool:
    """Whether CUDA ``device`` computes bfloat16 natively (not emulated through float32).

    ``torch.cuda.is_bf16_supported(including_emulation=False)`` for the current device where torch
    has that argument; compute capability >= 8.0 otherwise. False without CUDA or for another
    device type.
    """
    import torch

    dev = _device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    checks_emulation = "including_emulation" in inspect.signature(torch.cuda.is_bf16_supported).parameters
    if checks_emulation and index == torch.cuda.current_device():
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return tuple(torch.cuda.get_device_capability(index)) >= (8, 0)


def resolve_training_precision(value: str, device: Any) -> Precision:
    """``fp32``, ``bf16`` or ``fp16`` for ``value`` (see the module docstring) on ``device``.

    Args:
        value: one of :data:`TRAINING_PRECISIONS` (e.g. from :func:`precision_setting`).
        device: the training device (``torch.device`` or a string such as ``cuda:0``).

    Raises:
        ConfigError: an unknown value.
        KidneySSLError: ``fp16`` on a device other than CUDA.
    """
    requested = precision_setting(value)
    dev = _device(device)
    if requested == "auto":
        if dev.type != "cuda":
            return "fp32"
        return "bf16" if cuda_native_bf16(dev) else "fp16"
    if requested == "fp16" and dev.type != "cuda":
        raise KidneySSLError(f"fp16 mixed precision needs a CUDA GPU, the device is {dev}; "
                             "train in bf16 or fp32 there", remedy=("device",))
    return cast(Precision, requested)


def _check_resolved(precision: str) -> None:
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be resolved to fp32, bf16 or fp16 first, got {precision!r}")


def autocast_context(precision: str, device: Any) -> Any:
    """The context a training forward pass (and its loss) runs in: ``torch.autocast`` with
    bfloat16 or float16 on ``device``'s type, a no-op for ``fp32``.

    Raises:
        ValueError: ``precision`` is not resolved (``auto``) or unknown.
    """
    _check_resolved(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    import torch

    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=_device(device).type, dtype=dtype)


def build_grad_scaler(precision: str, device: Any) -> Any | None:
    """A CUDA ``GradScaler`` for ``fp16`` on a CUDA device; None otherwise (bfloat16 and float32
    gradients do not underflow the way float16 ones do).

    Raises:
        ValueError: ``precision`` is not resolved (``auto``) or unknown.
    """
    _check_resolved(precision)
    if precision != "fp16" or _device(device).type != "cuda":
        return None
    import torch

    return torch.amp.GradScaler("cuda")


def _gpu_name(dev: Any) -> str:
    import torch

    try:
        return str(torch.cuda.get_device_name(dev))
    except Exception:  # noqa: BLE001 - only a name for a log line
        return str(dev)


def describe_training_precision(requested: str, precision: str, device: Any) -> str:
    """One line saying which precision training uses on ``device`` and why.

    Args:
        requested: what the config asked for (``auto``, ``fp32``, ``bf16``, ``fp16``).
        precision: the resolved precision (:func:`resolve_training_precision`).
        device: the training device.
    """
    _check_resolved(precision)
    dev = _device(device)
    what = {"fp32": "fp32 (no autocast)",
            "bf16": "bf16 autocast, no grad scaler",
            "fp16": "fp16 autocast with a dynamic grad scaler"}[precision]
    if dev.type == "cuda":
        native = cuda_native_bf16(dev)
        if requested == "auto":
            why = f"{_gpu_name(dev)} {'computes bfloat16 natively' if native else 'has no native bfloat16'}"
        else:
            why = "as configured"
            if precision == "bf16" and not native:
                why += f"; {_gpu_name(dev)} only emulates bfloat16, which is slower than fp32"
    else:
        why = f"{dev.type}: mixed precision is chosen automatically on CUDA GPUs only" if requested == "auto" \
            else "as configured"
    return f"training precision: {what} ({requested}: {why})"


def configure_cuda(device: Any, cudnn_benchmark: bool) -> None:
    """Switch cuDNN's autotuner (``torch.backends.cudnn.benchmark``) for training on ``device``.

    The autotuner times the convolution algorithms once per new input shape and keeps the fastest;
    the first step at each shape pays for the search (``benchmarks/gpu_paper_epoch.py`` measures
    both). Deterministic mode (``configure_determinism(True)``, which turns it off) wins: the
    autotuner's choice may vary between runs. Nothing happens for a device other than CUDA.
    """
    import torch

    if _device(device).type != "cuda":
        return
    torch.backends.cudnn.benchmark = bool(cudnn_benchmark) and not torch.are_deterministic_algorithms_enabled()
