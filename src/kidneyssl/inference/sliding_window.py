"""The runner: a network over a whole preprocessed volume, on the two lateral halves (as at
training) or with MONAI's Gaussian-blended sliding window, as :mod:`kidneyssl.inference.strategy`
decided.

All arrays here are on the preprocessed canonical grid ``(Z, Y, X)`` (axis 2 = patient right ->
left, see :mod:`kidneyssl.io.geometry`). The network is any ``predictor`` callable mapping a
``(B, 1, z, y, x)`` float tensor to ``(B, 1, z, y, x)`` logits; the result is sigmoid
probabilities, so halves, windows and test-time flips are averaged as probabilities.

Test-time flipping (``cfg.tta_flip``) averages over all combinations of flips along
``tta_axes``; the default is the lateral axis only. Mirroring left/right turns a patient-right
half into something laid out like a patient-left half (kidney on the outer side, spine at the
inner edge), which the segmentation network sees in training, whereas flips along z
(head/feet) or y (front/back) produce upside-down anatomy it never sees (training does not
augment with them). Pass ``tta_axes=(0, 1, 2)`` for nnU-Net-style mirroring of every axis.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from typing import Any, Callable, Sequence

import numpy as np

from kidneyssl.config import InferenceConfig
from kidneyssl.inference.device import PAPER_BYTES_PER_VOXEL
from kidneyssl.inference.device import estimate_bytes_per_voxel as estimate_bytes_per_voxel  # noqa: F401
from kidneyssl.inference.strategy import Strategy, context_voxels, plan_inference
from kidneyssl.inference.strategy import choose_strategy as choose_strategy  # noqa: F401
from kidneyssl.io.geometry import LATERAL_AXIS, Side
from kidneyssl.preprocessing.halves import half_bounds
from kidneyssl.preprocessing.spatial import pad_to_multiple

__all__ = ["probability_predictor", "infer_volume"]
# estimate_bytes_per_voxel and choose_strategy live in device.py and strategy.py; they are
# imported above only for training.plan, which still imports them from here.

log = logging.getLogger(__name__)


def _ceil_to(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


def _flip_sets(axes: Sequence[int]) -> list[tuple[int, ...]]:
    axes = tuple(sorted(set(int(a) for a in axes)))
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def probability_predictor(predictor: Callable[[Any], Any], tta_axes: Sequence[int] = (),
                          bf16: bool = False) -> Callable[[Any], Any]:
    """Wrap a logits ``predictor`` into one returning float32 sigmoid probabilities.

    Args:
        predictor: ``(B, 1, z, y, x)`` tensor -> logits tensor of the same shape (or an object
            with a ``.logits`` attribute, e.g. ``SegmentationOutput``).
        tta_axes: spatial axes (0 = z, 1 = y, 2 = x) to flip for test-time augmentation;
            probabilities are averaged over every combination of flips (2**len(axes) passes).
        bf16: run the predictor under ``torch.autocast`` with bfloat16 (CPU or CUDA).
    """
    import torch

    flips = _flip_sets(tta_axes)

    def run(x: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        total: torch.Tensor | None = None
        for flip in flips:
            dims = [2 + a for a in flip]
            xin = torch.flip(x, dims) if dims else x
            with autocast:
                out = predictor(xin)
            logits = getattr(out, "logits", out)
            prob = torch.sigmoid(logits.float())
            if dims:
                prob = torch.flip(prob, dims)
            total = prob if total is None else total.add_(prob)
        assert total is not None
        return total.div_(len(flips)) if len(flips) > 1 else total

    return run


def infer_volume(predictor: Callable[[Any], Any], image: np.ndarray, cfg: InferenceConfig,
                 split_x: int | None = None, device: Any = "cpu", sw_device: Any = None,
                 progress: bool = False, *, spacing_mm: Sequence[float] | None = None,
                 strategy: Strategy = "auto", bytes_per_voxel: float = PAPER_BYTES_PER_VOXEL,
                 bf16: bool = False, tta_axes: Sequence[int] = (LATERAL_AXIS,),
                 pad_multiple: int = 16, roi_size: Sequence[int] | None = None) -> np.ndarray:
    """Kidney probabilities for a whole preprocessed volume.

    Args:
        predictor: ``(B, 1, z, y, x)`` float tensor -> logits of the same shape, e.g.
            ``lambda x: model(x).logits`` for a model in ``eval()`` mode.
        image: preprocessed canonical ``(Z, Y, X)`` float32 array (normally padded to a multiple
            of 16; other sizes are zero-padded here and cropped back).
        cfg: threshold-independent settings used here: ``memory_budget_mb``, ``sw_roi_size``,
            ``sw_overlap``, ``half_context_mm``, ``tta_flip``.
        split_x: lateral split plane (x < split_x is the patient-right half); ``None`` finds it
            from the image with :func:`kidneyssl.preprocessing.split_plane.find_split_x`.
        device: where outputs are stitched (sliding window) and where inputs live.
        sw_device: where the network runs; ``None`` means ``device``. E.g. ``sw_device="cuda"``,
            ``device="cpu"`` runs windows on the GPU and stitches on the CPU.
        progress: a progress bar over sliding windows.
        spacing_mm: grid spacing (z, y, x) in mm, to convert ``cfg.half_context_mm`` to voxels;
            ``None`` means no context across the split plane beyond rounding to 16.
        strategy: ``halves``, ``sliding`` or ``whole`` as decided by
            :func:`~kidneyssl.inference.strategy.plan_inference`, or ``auto`` to have it decided
            here by that same function (halves if they fit the budget, else a sliding window as
            large as the budget allows).
        bytes_per_voxel: activation memory estimate per input voxel for ``auto`` (see
            :func:`~kidneyssl.inference.device.estimate_bytes_per_voxel`).
        bf16: bfloat16 autocast.
        tta_axes: axes flipped when ``cfg.tta_flip`` is on (default: lateral only; see module doc).
        pad_multiple: size multiple the network needs.
        roi_size: sliding-window size; ``None``: grown within the budget when ``strategy`` is
            ``auto``, ``cfg.sw_roi_size`` when it is ``sliding`` (pass the plan's ``roi_size``
            to get the grown window after choosing).

    Returns:
        ``(Z, Y, X)`` float32 probabilities in [0, 1], on the CPU.
    """
    import torch

    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must be a 3-D (Z, Y, X) array, got shape {image.shape}")
    shape = tuple(int(s) for s in image.shape)
    padded_shape = tuple(_ceil_to(s, pad_multiple) for s in shape)
    if padded_shape != shape:  # at the end, so split_x and the crop back need no shift
        image, _ = pad_to_multiple(image, pad_multiple, mode="end")
    run_device = torch.device(sw_device if sw_device is not None else device)
    out_device = torch.device(device)
    prob_fn = probability_predictor(predictor, tta_axes if cfg.tta_flip else (), bf16=bf16)
    spacing_x = float(spacing_mm[LATERAL_AXIS]) if spacing_mm is not None else None

    if strategy in ("auto", "halves") and split_x is None:
        from kidneyssl.preprocessing.split_plane import find_split_x

        split_x = int(find_split_x(None, image[:, :, : shape[2]]))
    plane = split_x if split_x is not None else padded_shape[2] // 2
    chosen: str = strategy
    if strategy == "auto" or (strategy == "sliding" and roi_size is None):
        plan = plan_inference(padded_shape, plane, cfg, spacing_x, strategy=strategy,
                              precision="bf16" if bf16 else "fp32", device=run_device,
                              bytes_per_voxel=bytes_per_voxel)
        chosen, roi_size = plan.strategy, plan.roi_size
    log.debug("inference strategy %s on %s (split_x=%s)", chosen, padded_shape, split_x)

    with torch.inference_mode():
        array = np.ascontiguousarray(image, dtype=np.float32)
        if not array.flags.writeable:  # a memory-mapped cache array: torch wants a writable buffer
            array = array.copy()
        x = torch.from_numpy(array)[None, None]
        if chosen == "whole":
            prob = prob_fn(x.to(run_device))[0, 0].to("cpu")
        elif chosen == "halves":
            assert split_x is not None
            bounds = half_bounds(padded_shape[2], int(split_x), context_voxels(cfg, spacing_x),
                                 pad_multiple)
            right, left = bounds[Side.RIGHT], bounds[Side.LEFT]
            prob = torch.empty(padded_shape, dtype=torch.float32)
            p_right = prob_fn(x[..., right].to(run_device))[0, 0].to("cpu")
            prob[..., :split_x] = p_right[..., : split_x - right.start]
            del p_right
            p_left = prob_fn(x[..., left].to(run_device))[0, 0].to("cpu")
            prob[..., split_x:] = p_left[..., split_x - left.start:]
            del p_left
        elif chosen == "sliding":
            from monai.inferers import sliding_window_inference

            assert roi_size is not None
            roi = tuple(min(int(r), s) for r, s in zip(roi_size, padded_shape))
            stitched: Any = sliding_window_inference(  # one tensor for a tensor predictor
                x.to(out_device), roi_size=roi, sw_batch_size=1, predictor=prob_fn,
                overlap=cfg.sw_overlap, mode="gaussian", padding_mode="constant", cval=0.0,
                sw_device=run_device, device=out_device, progress=progress,
            )
            prob = stitched[0, 0].to("cpu")
        else:
            raise ValueError(f"unknown strategy {strategy!r}; use auto, whole, halves or sliding")
    out = prob.numpy()
    if padded_shape != shape:
        out = out[: shape[0], : shape[1], : shape[2]]
    return np.ascontiguousarray(out, dtype=np.float32)
