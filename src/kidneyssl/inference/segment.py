"""THE inference procedure: one preprocessed image in, a post-processed kidney mask out.

Every code path that scores or applies a model calls :func:`segment_image`: per-epoch validation
(``training/finetune.py``), Table 1 and Fig. 4 of the experiment (``workflows/experiment.py``) and
``kidneyssl predict`` (:func:`kidneyssl.inference.predict.predict_volume`). It takes an image
(never a label) and:

1. finds the lateral split plane from the image alone (the body's lateral centre,
   :func:`kidneyssl.preprocessing.split_plane.find_split_x` without a mask);
2. takes the network's backend and precision from an
   :class:`~kidneyssl.inference.engine.InferenceModel` (a bare module runs on torch) and plans the
   strategy for the device (:func:`kidneyssl.inference.strategy.plan_inference`: the two halves
   of :func:`kidneyssl.preprocessing.halves.half_bounds` -- the same halves training uses --
   whenever they fit the memory, the sliding window as a fallback);
3. infers sigmoid probabilities and post-processes them on the preprocessed grid (threshold,
   largest component per side, :func:`kidneyssl.inference.postprocess.keep_kidney_components`);
4. with a :class:`~kidneyssl.preprocessing.pipeline.PreprocessRecord`, restores the probabilities to
   the original file's grid (trilinear) and thresholds there.

The network always sees inputs of the size it was trained on, air around the patient included:
its GroupNorm statistics span its whole input. A network trained on whole half volumes (the
paper's) runs on whole halves; running it on the body's bounding box alone changed the masks far
beyond the agreement target (``benchmarks/results/agreement_demo.json``). A network trained on
random crops (``train.crop_size``) runs on sliding windows of that crop size, as nnU-Net infers at
its patch size: on whole halves the same network found far less
(``benchmarks/results/crop_trained_inference.json``).

Because the cache stores exactly ``preprocess_image(read_volume(imaging))``, the experiment's
Table 1 and ``predict`` + ``evaluate`` give the same masks for the same checkpoint (tested).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from kidneyssl.config import ExperimentConfig
from kidneyssl.inference.engine import InferenceModel
from kidneyssl.inference.postprocess import (
    keep_kidney_components,
    threshold_probabilities,
)
from kidneyssl.inference.sliding_window import infer_volume
from kidneyssl.inference.strategy import InferencePlan, for_training_input, plan_inference
from kidneyssl.preprocessing.pipeline import PreprocessRecord
from kidneyssl.preprocessing.split_plane import find_split_x

__all__ = ["Segmentation", "segment_image", "as_inference_model"]


@dataclass
class Segmentation:
    """What :func:`segment_image` returns.

    Attributes:
        mask: uint8 kidney mask on the preprocessed grid (post-processed).
        probabilities: float32 probabilities on the preprocessed grid, zeroed away from the kept
            components (``None`` once restored, unless asked to keep them).
        split_x: the image-derived lateral split plane on the preprocessed grid.
        strategy: ``halves``, ``sliding`` or ``whole``.
        original_mask: uint8 mask on the original file's grid (with a record), else ``None``.
        original_probabilities: float32 probabilities on the original grid (when asked).
        timings: seconds for ``infer``, ``postprocess`` and ``restore``.
        plan: backend, precision, memory budget, strategy and window used.
    """

    mask: np.ndarray
    probabilities: np.ndarray | None
    split_x: int
    strategy: str
    original_mask: np.ndarray | None = None
    original_probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    plan: InferencePlan | None = None


def as_inference_model(model: Any, cfg: ExperimentConfig, *, device: Any = "cpu", backend: str | None = None,
                       precision: str | None = None) -> InferenceModel:
    """``model`` itself when it is an :class:`InferenceModel` (then ``backend`` and ``precision``
    must be unset or agree with it), else the module wrapped with ``backend`` (default
    ``torch``) and ``precision`` (default ``cfg.inference.precision``).

    Raises:
        ValueError: an :class:`InferenceModel` with another backend or precision than asked.
    """
    if isinstance(model, InferenceModel):
        if backend not in (None, "auto", model.backend) or precision not in (None, "auto", model.precision):
            raise ValueError(f"this InferenceModel runs {model.backend}/{model.precision}; "
                             f"asked for {backend or model.backend}/{precision or model.precision}")
        return model
    return InferenceModel(model, backend=backend or "torch", precision=precision or cfg.inference.precision,
                          device=device)


def segment_image(model: Any, image: np.ndarray, cfg: ExperimentConfig, *,
                  record: PreprocessRecord | None = None, spacing_mm: Any = None,
                  device: Any = "cpu", sw_device: Any = None,
                  bf16: bool = False, strategy: str = "auto", progress: bool = False,
                  keep_probabilities: bool = False, precision: str | None = None,
                  backend: str | None = None) -> Segmentation:
    """Segment the kidneys of one preprocessed image (the module docstring lists the steps).

    Args:
        model: an :class:`~kidneyssl.inference.engine.InferenceModel` (from
            :func:`kidneyssl.inference.predict.load_model`), or a segmentation network in
            ``eval()`` mode returning ``SegmentationOutput``, on ``sw_device or device``.
        image: ``(Z, Y, X)`` float32 preprocessed canonical image (e.g. a cached ``image.npy``).
        cfg: the checkpoint's config (``inference``, ``model``, ``preprocess``).
        record: the image's preprocessing record; with it the result is also restored to the
            original grid (``original_mask``) and its grid spacing is used.
        spacing_mm: grid spacing (z, y, x) without a record (default ``cfg.preprocess.spacing_mm``).
        device: where sliding-window outputs are stitched; ``sw_device``: where the network runs.
        bf16: bfloat16 for a bare network (same as ``precision="bf16"``).
        precision: ``auto``, ``fp32`` or ``bf16`` for a bare network; default
            ``cfg.inference.precision`` (``auto``: measured, :mod:`kidneyssl.inference.precision`).
        backend: ``torch`` (default), ``openvino`` or ``auto`` for a bare network.
        strategy: ``auto`` (a network trained on crops: sliding windows of its crop size; else
            halves when they fit, else sliding window), ``halves``, ``sliding``,
            ``whole``.
        keep_probabilities: keep the probabilities (preprocessed grid, and original grid with a
            record).
    """
    icfg, strategy = for_training_input(cfg.inference, cfg.train.crop_size, strategy)
    engine = as_inference_model(model, cfg, device=sw_device or device, backend=backend,
                                precision=precision or ("bf16" if bf16 else None))
    if engine is model:  # a loaded model says once how it runs; a bare one (validation) stays quiet
        engine.announce()
    image = np.asarray(image)
    if record is not None:
        spacing_mm = record.spacing_mm
    spacing = tuple(float(s) for s in (spacing_mm if spacing_mm is not None else cfg.preprocess.spacing_mm))
    timings: dict[str, float] = {"infer": 0.0, "postprocess": 0.0}
    t0 = time.perf_counter()
    split_x = int(find_split_x(None, image))
    plan = plan_inference(image.shape, split_x, icfg, spacing[2], cfg.model, strategy=strategy,  # type: ignore[arg-type]
                          precision="fp32" if engine.agreement_pending else engine.precision,
                          device=engine.device, backend=engine.backend)
    timings["infer"] += time.perf_counter() - t0

    def scan(logits: Any) -> tuple[tuple[Any, ...], np.ndarray]:
        t0 = time.perf_counter()
        prob = infer_volume(logits, image, icfg, split_x=split_x, device=device, sw_device=sw_device,
                            progress=progress, spacing_mm=spacing, strategy=plan.strategy,  # type: ignore[arg-type]
                            roi_size=plan.roi_size)
        timings["infer"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        mask = keep_kidney_components(prob, split_x, icfg.threshold, icfg.largest_component)
        timings["postprocess"] += time.perf_counter() - t0
        if record is None:
            return (prob, mask, None, None), mask
        t0 = time.perf_counter()
        if keep_probabilities:
            restored = record.restore(prob, order="linear")
            original, original_prob = threshold_probabilities(restored, icfg.threshold), np.asarray(restored, np.float32)
            del restored
        else:  # thresholded chunk by chunk: no full-resolution float32 array
            original, original_prob = record.restore(prob, order="linear", threshold=icfg.threshold), None
        timings["restore"] = timings.get("restore", 0.0) + time.perf_counter() - t0
        return (prob, mask, original, original_prob), original  # the check judges the mask written

    # Once, while the bf16 check is pending, the scan runs in both precisions (InferenceModel.segment).
    (prob, mask, original, original_prob), _ = engine.segment(scan)
    # A compiled model holds its activation memory: freed before the next scan is read, unless it
    # runs windows of the configured size, the shape every scan's windows have (kept, it is not
    # compiled and its memory not touched afresh for each scan).
    if plan.strategy != "sliding" or plan.roi_size != tuple(icfg.sw_roi_size):
        engine.release()
    result = Segmentation(mask=mask, probabilities=prob if record is None or keep_probabilities else None,
                          split_x=split_x, strategy=plan.strategy, timings=timings, plan=plan)
    if record is None:
        return result
    result.original_mask, result.original_probabilities = original, original_prob
    if tuple(result.original_mask.shape) != tuple(record.original.shape):  # the data layer's contract
        raise RuntimeError(f"restored mask shape {result.original_mask.shape} differs from the input's "
                           f"{record.original.shape}")
    return result
