"""THE inference strategy decision: halves, sliding window or whole volume, and the window size.

:func:`plan_inference` is the one place it is made (``segment_image`` calls it per volume, and
``infer_volume`` calls it when asked for ``auto``); :func:`choose_strategy` is its memory rule.
Why halves by default: the network normalises with GroupNorm, whose statistics are taken over the
whole input, so its output depends on the field of view; it was trained on half volumes (with
some context across the split plane), so those are its in-distribution input. The sliding window
is the fallback when a half does not fit the memory budget. A network trained on random crops
instead (``train.crop_size``) runs on windows of its crop size (:func:`for_training_input`).

The per-volume line saying why ("half volume ... needs ~N MB <= budget ...") is logged at DEBUG;
a run says once, at its start, what rule applies (:meth:`InferencePlan.describe`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any, Literal, Sequence

from kidneyssl.config import InferenceConfig, ModelConfig
from kidneyssl.inference.device import estimate_bytes_per_voxel, resolve_memory_budget_mb
from kidneyssl.preprocessing.halves import half_bounds

__all__ = [
    "Strategy",
    "Precision",
    "InferencePlan",
    "context_voxels",
    "largest_half",
    "choose_strategy",
    "for_training_input",
    "sliding_window_roi",
    "plan_inference",
]

log = logging.getLogger(__name__)

Strategy = Literal["auto", "whole", "halves", "sliding"]
Precision = Literal["fp32", "bf16"]


def context_voxels(cfg: InferenceConfig, spacing_x_mm: float | None) -> int:
    """``cfg.half_context_mm`` in voxels of lateral spacing ``spacing_x_mm`` (0 without one)."""
    if spacing_x_mm is None or spacing_x_mm <= 0:
        return 0
    return int(math.ceil(cfg.half_context_mm / spacing_x_mm))


def largest_half(shape: Sequence[int], split_x: int, cfg: InferenceConfig,
                 spacing_x_mm: float | None, multiple: int = 16) -> tuple[int, int, int]:
    """(Z, Y, X) of the larger of the two half volumes of a ``shape`` grid
    (:func:`kidneyssl.preprocessing.halves.half_bounds`)."""
    z, y, x = (int(s) for s in shape)
    bounds = half_bounds(x, split_x, context_voxels(cfg, spacing_x_mm), multiple)
    return z, y, max(cols.stop - cols.start for cols in bounds.values())


def _halves_need_mb(shape: Sequence[int], split_x: int, cfg: InferenceConfig, spacing_x_mm: float | None,
                    bytes_per_voxel: float) -> tuple[tuple[int, int, int], float]:
    half = largest_half(shape, split_x, cfg, spacing_x_mm)
    return half, math.prod(half) * bytes_per_voxel / 2**20


def for_training_input(cfg: InferenceConfig, crop_size: tuple[int, int, int] | None,
                       strategy: str) -> tuple[InferenceConfig, str]:
    """``(cfg, strategy)`` for a network trained on ``crop_size`` crops (``None``: whole halves):
    asked for ``auto``, a crop-trained network runs on sliding windows of its crop size, the input
    its GroupNorm statistics were learnt on; any other request is kept."""
    if strategy != "auto" or crop_size is None:
        return cfg, strategy
    return dataclasses.replace(cfg, sw_roi_size=crop_size), "sliding"


def choose_strategy(shape: Sequence[int], split_x: int, cfg: InferenceConfig, spacing_x_mm: float | None,
                    bytes_per_voxel: float, strategy: Strategy = "auto", *, device: Any = "cpu",
                    budget_mb: int | None = None) -> Strategy:
    """The memory rule: ``strategy`` unless it is ``auto``, in which case halves when the larger
    half's estimated activation memory fits the budget, else the sliding window.

    Args:
        budget_mb: the budget; ``None`` means :func:`resolve_memory_budget_mb` of ``cfg`` on
            ``device`` (``cfg.memory_budget_mb``, or a share of the available memory if it is 0).
    """
    if strategy != "auto":
        return strategy
    budget = resolve_memory_budget_mb(cfg, device) if budget_mb is None else int(budget_mb)
    (z, y, x), need_mb = _halves_need_mb(shape, split_x, cfg, spacing_x_mm, bytes_per_voxel)
    chosen: Strategy = "halves" if need_mb <= budget else "sliding"
    log.debug("half volume %dx%dx%d needs ~%.0f MB %s budget %d MB: %s", z, y, x, need_mb,
              "<=" if chosen == "halves" else ">", budget, "halves" if chosen == "halves" else "sliding window")
    return chosen


def sliding_window_roi(half_shape: Sequence[int], cfg: InferenceConfig, bytes_per_voxel: float,
                       budget_mb: float, multiple: int = 16) -> tuple[int, int, int]:
    """The largest sliding window, between ``cfg.sw_roi_size`` and ``half_shape`` (the half
    volume the network was trained on), whose activations fit ``budget_mb``.

    Starting from the half volume, the axis that is largest relative to its minimum shrinks by
    ``multiple`` voxels until the window fits or every axis is at its minimum
    (``cfg.sw_roi_size``, capped by ``half_shape``). Larger windows mean fewer, less
    border-affected windows and GroupNorm statistics closer to the training input's.
    """
    half = [int(s) for s in half_shape]
    low = [min(int(r), h) for r, h in zip(cfg.sw_roi_size, half)]
    roi = list(half)
    while math.prod(roi) * bytes_per_voxel / 2**20 > budget_mb:
        shrinkable = [i for i in range(3) if roi[i] - multiple >= low[i]]
        if not shrinkable:
            roi = [max(lo, r) for lo, r in zip(low, roi)]
            break
        axis = max(shrinkable, key=lambda i: roi[i] / low[i])
        roi[axis] -= multiple
    return (roi[0], roi[1], roi[2])


@dataclass(frozen=True)
class InferencePlan:
    """What :func:`plan_inference` decided for one volume (saved with predictions).

    Attributes:
        strategy: ``halves``, ``sliding`` or ``whole``.
        precision: ``fp32`` or ``bf16``.
        budget_mb: activation memory budget used for the choice.
        bytes_per_voxel: activation estimate per input voxel (for ``precision`` and ``backend``).
        roi_size: sliding-window size (z, y, x), or ``None`` unless ``strategy == "sliding"``.
        backend: ``torch`` or ``openvino``.
    """

    strategy: str
    precision: Precision
    budget_mb: int
    bytes_per_voxel: float
    roi_size: tuple[int, int, int] | None = None
    backend: str = "torch"

    def describe(self) -> str:
        """One line, e.g. ``halves, fp32, memory budget 14000 MB``."""
        roi = f" {'x'.join(map(str, self.roi_size))}" if self.roi_size else ""
        return f"{self.strategy}{roi}, {self.precision}, memory budget {self.budget_mb} MB"


def describe_rule(budget_mb: int, bytes_per_voxel: float) -> str:
    """The rule :func:`choose_strategy` applies, in words, for the start of a run: e.g. ``halves
    while each fits 14000 MB at ~660 B per voxel (up to 21.2 M voxels), else sliding windows``."""
    voxels = budget_mb * 2**20 / max(bytes_per_voxel, 1e-9)
    return (f"halves while each fits {budget_mb} MB at ~{bytes_per_voxel:.0f} B per voxel "
            f"(up to {voxels / 1e6:.1f} M voxels), else sliding windows")


def plan_inference(shape: Sequence[int], split_x: int, cfg: InferenceConfig, spacing_x_mm: float | None,
                   model_cfg: ModelConfig | None = None, *, strategy: Strategy = "auto",
                   precision: Precision = "fp32", device: Any = "cpu", backend: str = "torch",
                   bytes_per_voxel: float | None = None) -> InferencePlan:
    """Memory budget, strategy and window for one preprocessed volume of ``shape``.

    Args:
        shape: (Z, Y, X) of the preprocessed (padded) volume; ``split_x`` its lateral split plane.
        cfg: ``memory_budget_mb`` (0: from the memory available on ``device``), ``sw_roi_size``
            (smallest window), ``half_context_mm``.
        model_cfg: the network's config, for :func:`estimate_bytes_per_voxel`.
        precision: the precision the network runs in (already resolved, see
            :mod:`kidneyssl.inference.precision`).
        device: where the network runs; ``backend``: what runs it (``torch`` or ``openvino``).
        bytes_per_voxel: the activation estimate to use instead of :func:`estimate_bytes_per_voxel`
            (a predictor that is not a known network).
    """
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be fp32 or bf16 here (resolve auto first), got {precision!r}")
    bpv = bytes_per_voxel if bytes_per_voxel is not None else \
        estimate_bytes_per_voxel(model_cfg, bf16=precision == "bf16", device=device, backend=backend)
    budget = resolve_memory_budget_mb(cfg, device)
    chosen = choose_strategy(shape, split_x, cfg, spacing_x_mm, bpv, strategy, device=device, budget_mb=budget)
    roi = None
    if chosen == "sliding":  # grown within the budget when chosen, the configured size when forced
        roi = sliding_window_roi(largest_half(shape, split_x, cfg, spacing_x_mm), cfg, bpv, budget) \
            if strategy == "auto" else tuple(cfg.sw_roi_size)
    return InferencePlan(chosen, precision, budget, bpv, roi, backend)  # type: ignore[arg-type]
