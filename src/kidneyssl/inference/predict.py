"""Segment kidneys in new scans with a trained checkpoint, and write masks on the input's grid.

The pipeline of one scan (``predict_volume``; ``predict_preprocessed`` from step 2), every stage timed:

1. **preprocess** exactly as at training, with the ``PreprocessConfig`` stored in the checkpoint
   (canonical orientation, resampling, HU window, z-score, padding);
2. **infer** sigmoid probabilities on that grid (:func:`~kidneyssl.inference.segment.segment_image`:
   two lateral halves when they fit the memory budget, else a Gaussian-blended
   sliding window; backend and precision from :func:`load_model`);
3. **postprocess** on the same canonical grid: threshold, keep the largest connected component on
   each side of the lateral split plane, and zero the probabilities outside a one-voxel margin of
   the kept components (so the mask on the original grid holds no other components, while the
   kept kidneys' interpolated boundaries are untouched: a trilinear stencil touching a kept
   component lies entirely inside that margin);
4. **restore** the probabilities to the original file's grid with trilinear interpolation
   (``PreprocessRecord.restore``) and threshold there, so the mask has the original resolution
   rather than the network grid's staircase;
5. **write** ``prediction_<id>.nii.gz`` (uint8) with exactly the input's shape and affine.

``predict_path`` does this for a NIfTI file, a KiTS19-layout folder, a folder of NIfTI files or
DICOM series folders; one bad file is reported and the others go on.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from kidneyssl.config import ExperimentConfig
from kidneyssl.errors import KidneySSLError
from kidneyssl.inference.inputs import PredictionInput, find_inputs, read_input
from kidneyssl.io.geometry import Geometry, Volume
from kidneyssl.io.paths import describe_os_error

if TYPE_CHECKING:
    from kidneyssl.preprocessing.pipeline import PreprocessRecord

__all__ = [
    "PredictionResult",
    "PredictSummary",
    "load_model",
    "predict_volume",
    "predict_preprocessed",
    "predict_path",
]

log = logging.getLogger(__name__)

ProbabilityFormat = Literal["float32", "uint8"]
#: The run's summary, beside the masks.
SUMMARY_JSON = "predict_summary.json"


@dataclass
class PredictionResult:
    """Prediction of one scan, on the ORIGINAL file's grid.

    Attributes:
        mask: uint8 kidney mask, same shape (and array layout) as the input file.
        geometry: the input's geometry (write the mask with it).
        probabilities: float32 kidney probabilities on the same grid (after largest-component
            filtering when that is on), or ``None`` unless requested.
        timings: seconds per stage (``preprocess``, ``infer``, ``postprocess``, ``restore``).
        strategy: ``halves``, ``sliding`` or ``whole``.
        split_x: lateral split plane on the preprocessed grid.
    """

    mask: np.ndarray
    geometry: Geometry
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    strategy: str = ""
    plan: dict[str, Any] = field(default_factory=dict)
    split_x: int = 0


@dataclass
class PredictSummary:
    """Outcome of :func:`predict_path`: written masks, per-case failures, per-case timings."""

    written: dict[str, Path] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    timings: dict[str, dict[str, float]] = field(default_factory=dict)
    strategies: dict[str, str] = field(default_factory=dict)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed


def load_model(checkpoint_path: str | Path, device: Any = "cpu", *, backend: str = "auto",
               precision: str | None = None, threads: int | None = None) -> tuple[Any, ExperimentConfig]:
    """A segmentation checkpoint ready for inference: ``(InferenceModel, its config)``.

    The network is rebuilt by :func:`kidneyssl.models.transfer.load_model` (``model.module``);
    ``backend`` (``auto``: OpenVINO when installed and ``device`` is a CPU, see
    :mod:`kidneyssl.inference.engine`) and ``precision`` (default: the checkpoint's
    ``inference.precision``; ``auto`` is measured on first use) say how it runs. ``predict``,
    ``locate`` and the experiment's Table 1 all load checkpoints here.

    Raises:
        CheckpointError: the checkpoint cannot be used (see the transfer function).
        KidneySSLError: ``backend="openvino"`` without OpenVINO, or on a GPU.
    """
    from kidneyssl.inference.engine import InferenceModel
    from kidneyssl.models.transfer import load_model as load_network

    module, cfg = load_network(checkpoint_path, device)
    engine = InferenceModel(module, backend=backend, precision=precision or cfg.inference.precision,
                            device=device, threads=threads)
    return engine, cfg


def predict_volume(model: Any, volume: Volume, cfg: ExperimentConfig, *, device: Any = "cpu",
                   sw_device: Any = None, keep_probabilities: bool = False, bf16: bool = False,
                   strategy: str = "auto", progress: bool = False,
                   precision: str | None = None) -> PredictionResult:
    """Kidney mask (and optionally probabilities) of ``volume`` on its own grid.

    Preprocesses with the checkpoint's config, then runs :func:`~kidneyssl.inference.segment.segment_image`
    (the one inference procedure, also used by validation and the experiment's Table 1).

    Args:
        model: an ``InferenceModel`` from :func:`load_model`, or a segmentation network in eval
            mode (returns ``SegmentationOutput``; run by torch), on ``sw_device or device``.
        volume: the scan as read from disk (any orientation and spacing).
        cfg: the checkpoint's config; ``cfg.preprocess`` and ``cfg.inference`` are used.
        device: where sliding-window outputs are stitched; ``sw_device``: where the network runs.
        keep_probabilities: also return float32 probabilities on the original grid.
        bf16: bfloat16 for a bare network (same as ``precision="bf16"``).
        strategy: ``auto``, ``halves``, ``sliding`` or ``whole`` (see ``infer_volume``).
        precision: ``auto``, ``fp32`` or ``bf16`` for a bare network (default: the checkpoint's
            ``inference.precision``).
    """
    image, record, preprocess_s = _preprocess(volume, cfg)
    return predict_preprocessed(model, image, record, volume.geometry, cfg, preprocess_s=preprocess_s,
                                device=device, sw_device=sw_device, keep_probabilities=keep_probabilities,
                                bf16=bf16, strategy=strategy, progress=progress, precision=precision)


def _preprocess(volume: Volume, cfg: ExperimentConfig) -> tuple[np.ndarray, PreprocessRecord, float]:
    """``preprocess_image(volume, cfg.preprocess)`` and the seconds it took."""
    from kidneyssl.preprocessing.pipeline import preprocess_image

    t0 = time.perf_counter()
    image, record = preprocess_image(volume, cfg.preprocess)
    return image, record, time.perf_counter() - t0


def predict_preprocessed(model: Any, image: np.ndarray, record: PreprocessRecord, geometry: Geometry,
                         cfg: ExperimentConfig, *, preprocess_s: float = 0.0, device: Any = "cpu",
                         sw_device: Any = None, keep_probabilities: bool = False, bf16: bool = False,
                         strategy: str = "auto", progress: bool = False,
                         precision: str | None = None) -> PredictionResult:
    """:func:`predict_volume` after preprocessing: ``image`` and ``record`` from
    ``preprocess_image(volume, cfg.preprocess)``, ``geometry`` the scan's own grid. A caller that
    holds the scan can release its voxels before inference (only its grid is needed from here)."""
    from kidneyssl.inference.segment import segment_image

    seg = segment_image(model, image, cfg, record=record, device=device, sw_device=sw_device, bf16=bf16,
                        strategy=strategy, progress=progress, keep_probabilities=keep_probabilities,
                        precision=precision)
    assert seg.original_mask is not None
    return PredictionResult(mask=seg.original_mask, geometry=geometry,
                            probabilities=seg.original_probabilities,
                            timings={"preprocess": preprocess_s, **seg.timings}, strategy=seg.strategy,
                            plan=dataclasses.asdict(seg.plan) if seg.plan else {},
                            split_x=seg.split_x)


def _output_paths(item: PredictionInput, out_dir: Path, probabilities: bool) -> list[Path]:
    """The files predict writes for ``item``: its mask, and its probability map when asked."""
    names = [f"prediction_{item.output_id}.nii.gz"] + ([f"probability_{item.output_id}.nii.gz"]
                                                       if probabilities else [])
    return [out_dir / name for name in names]


def _write_outputs(result: PredictionResult, item: PredictionInput, out_dir: Path,
                   probability_format: ProbabilityFormat | None) -> Path:
    from kidneyssl.io.volumes import write_mask, write_volume

    out = out_dir / f"prediction_{item.output_id}.nii.gz"
    write_mask(result.mask, out, like=result.geometry)
    if probability_format is not None and result.probabilities is not None:
        prob = result.probabilities
        if probability_format == "uint8":  # 0..255 = probability * 255, rounded
            prob = np.rint(np.clip(prob, 0.0, 1.0) * 255.0).astype(np.uint8)
        write_volume(prob, result.geometry, out_dir / f"probability_{item.output_id}.nii.gz")
    return out


def _remove_outputs(paths: list[Path]) -> None:
    """A failed case leaves no file under a final name (not even one of an earlier run)."""
    for path in paths:
        try:
            path.unlink(missing_ok=True)
        except OSError as err:  # pragma: no cover - a folder we just wrote into
            log.warning("%s: could not remove the output of a failed case (%s)", path.absolute(), err.strerror)


def predict_path(model_path: str | Path, input_path: str | Path, out_dir: str | Path, *,
                 device: str = "cpu", sw_device: str | None = None, threads: int | None = None,
                 tta: bool | None = None, largest_component: bool | None = None,
                 memory_budget_mb: int | None = None, bf16: bool = False, precision: str | None = None,
                 save_probabilities: bool = False, probability_format: ProbabilityFormat = "float32",
                 strategy: str = "auto", backend: str = "auto") -> PredictSummary:
    """Predict every scan under ``input_path`` and write ``prediction_<id>.nii.gz`` to ``out_dir``.

    Args:
        model_path: a segmentation checkpoint (its config rebuilds model and preprocessing).
        input_path: a NIfTI file, a KiTS19-layout folder (``case_XXXXX/imaging.nii.gz`` ->
            ``prediction_XXXXX.nii.gz``), a folder of NIfTI files (``<stem>.nii.gz`` ->
            ``prediction_<stem>.nii.gz``) or of DICOM series folders (``<folder>`` ->
            ``prediction_<folder>.nii.gz``), or one DICOM series folder.
        threads: ``torch.set_num_threads`` (and OpenVINO's threads; logged at start); ``None``
            leaves torch's default.
        tta, largest_component, memory_budget_mb: override the checkpoint's ``InferenceConfig``.
        precision: ``auto`` (measured once per machine), ``fp32`` or ``bf16``; default the
            checkpoint's ``inference.precision``. ``bf16`` is the same as ``precision="bf16"``.
        backend: ``auto`` (OpenVINO when installed and the network runs on a CPU), ``torch`` or
            ``openvino``.
        save_probabilities: also write ``probability_<id>.nii.gz`` (``probability_format``
            float32, or uint8 = round(255 * p)).

    Returns:
        :class:`PredictSummary`; ``summary.failed`` maps an input to its error message. A summary
        ``predict_summary.json`` is written to ``out_dir`` as well.

    Raises:
        CheckpointError: the checkpoint cannot be used (nothing is predicted).
        KidneySSLError: the OpenVINO backend asked for but not usable.
        DataError: ``input_path`` holds no scans, or an output would be written over, into or
            around one of them (nothing is predicted).
    """
    import torch

    from kidneyssl.inference.device import estimate_bytes_per_voxel, resolve_memory_budget_mb
    from kidneyssl.inference.strategy import describe_rule
    from kidneyssl.io.atomic import atomic_write_json
    from kidneyssl.progress import progress

    if threads is not None:
        torch.set_num_threads(int(threads))
    from kidneyssl.io.outputs import check_outputs

    items = find_inputs(input_path)
    out_dir = Path(out_dir)
    # Nothing is written over, into or around a scan it reads (its own names are never inputs).
    check_outputs([p for it in items for p in _output_paths(it, out_dir, save_probabilities)]
                  + [out_dir / SUMMARY_JSON], [p for it in items for p in it.paths], inputs_name="the scans")
    model, cfg = load_model(model_path, sw_device or device, backend=backend,
                            precision=precision or ("bf16" if bf16 else None))
    overrides: dict[str, Any] = {k: v for k, v in (("tta_flip", tta), ("largest_component", largest_component),
                                                   ("memory_budget_mb", memory_budget_mb)) if v is not None}
    if overrides:
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, **overrides))
    # Once per run, what applies to every case; each case's own plan is logged at DEBUG.
    budget = resolve_memory_budget_mb(cfg.inference, model.device)
    bpv = estimate_bytes_per_voxel(cfg.model, bf16=model.precision == "bf16", device=model.device,
                                   backend=model.backend)
    rule = describe_rule(budget, bpv) if strategy == "auto" else f"{strategy} (asked)"
    model.announce(f"kidneyssl predict: {torch.get_num_threads()} torch threads, device {device}"
                   f"{f' (network on {sw_device})' if sw_device else ''}, strategy: {rule}")
    summary = PredictSummary()
    for item in progress(items, desc="predict", unit="case"):
        t_case = time.perf_counter()
        try:
            t0 = time.perf_counter()
            volume = read_input(item, check=True)  # refuses implausible scans (io/plausibility.py)
            read_s = time.perf_counter() - t0
            image, record, preprocess_s = _preprocess(volume, cfg)
            geometry = volume.geometry
            del volume  # its voxels (a KiTS scan: 150-300 MB) are not held through inference's peak
            result = predict_preprocessed(model, image, record, geometry, cfg, preprocess_s=preprocess_s,
                                          device=device, sw_device=sw_device,
                                          keep_probabilities=save_probabilities, strategy=strategy)
            del image
            t0 = time.perf_counter()
            written = _write_outputs(result, item, out_dir, probability_format if save_probabilities else None)
            result.timings = {"read": read_s, **result.timings, "write": time.perf_counter() - t0,
                              "total": time.perf_counter() - t_case}
            summary.written[item.name] = written
            summary.timings[item.name] = result.timings
            summary.strategies[item.name] = result.strategy
            summary.plans[item.name] = result.plan
            log.debug("%s: %s (%s, split_x=%d) %s", item.name, written, result.strategy, result.split_x,
                      {k: round(v, 2) for k, v in result.timings.items()})
        except KidneySSLError as err:
            summary.failed[item.name] = str(err)
            log.error("%s: %s", item.name, err)
        except OSError as err:  # a full disk, a vanished file: the message names the file
            summary.failed[item.name] = describe_os_error(err)
            log.error("%s: %s", item.name, summary.failed[item.name])
            log.debug("traceback", exc_info=True)
        except (ValueError, RuntimeError, MemoryError) as err:
            summary.failed[item.name] = f"{type(err).__name__}: {err}"
            log.error("%s: unexpected %s: %s", item.name, type(err).__name__, err)
            log.debug("traceback", exc_info=True)
        if item.name in summary.failed:
            _remove_outputs(_output_paths(item, out_dir, probabilities=True))
    atomic_write_json(out_dir / SUMMARY_JSON, {
        "model": str(model_path), "input": str(input_path), "inference": model.describe(),
        "written": {k: str(v) for k, v in summary.written.items()},
        "failed": summary.failed, "strategy": summary.strategies, "inference_plan": summary.plans,
        "timings_s": summary.timings,
    })
    log.info("predicted %d of %d scans into %s%s", len(summary.written), len(items), out_dir,
             f"; {len(summary.failed)} failed: {', '.join(summary.failed)}" if summary.failed else "")
    return summary
