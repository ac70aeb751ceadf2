"""Scans without masks: locate their kidneys with a trained model (pseudo-labels for pretraining)."""

from kidneyssl.unlabeled.locate import (
    LOCATE_JSON,
    LocateSummary,
    kidney_confidence,
    locate_path,
    locate_scans,
)

__all__ = ["LOCATE_JSON", "LocateSummary", "kidney_confidence", "locate_scans", "locate_path"]
