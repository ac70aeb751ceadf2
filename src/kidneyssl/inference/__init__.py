"""Inference: whole-volume probabilities (halves or sliding window), post-processing, and
prediction of NIfTI/KiTS19/DICOM inputs back on the input's own grid."""

from kidneyssl.inference.sliding_window import infer_volume

__all__ = ["infer_volume"]
