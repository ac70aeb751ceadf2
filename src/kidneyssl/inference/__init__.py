"""Inference: whole-volume probabilities (halves or sliding window), post-processing, and
prediction of NIfTI/KiTS19/DICOM inputs back on the input's own grid.

Modules: ``segment`` (THE procedure), ``engine`` (backend and precision of a network),
``strategy`` (THE strategy decision), ``device`` (memory and processor facts), ``sliding_window``
(the runner), ``precision`` (the bf16 probe), ``ov_backend`` (OpenVINO), ``cache`` (the user's
cache folder), ``postprocess``, ``predict`` and ``inputs``.

Importing this package does not import torch; the functions do when called.
"""

from kidneyssl.inference.device import estimate_bytes_per_voxel
from kidneyssl.inference.engine import InferenceModel
from kidneyssl.inference.inputs import PredictionInput, find_inputs, read_dicom_series
from kidneyssl.inference.postprocess import (
    largest_component_per_side,
    threshold_probabilities,
)
from kidneyssl.inference.predict import (
    PredictionResult,
    PredictSummary,
    load_model,
    predict_path,
    predict_volume,
)
from kidneyssl.inference.segment import Segmentation, segment_image
from kidneyssl.inference.sliding_window import infer_volume

__all__ = [
    "segment_image",
    "Segmentation",
    "InferenceModel",
    "infer_volume",
    "estimate_bytes_per_voxel",
    "threshold_probabilities",
    "largest_component_per_side",
    "load_model",
    "predict_volume",
    "predict_path",
    "PredictionResult",
    "PredictSummary",
    "PredictionInput",
    "find_inputs",
    "read_dicom_series",
]
