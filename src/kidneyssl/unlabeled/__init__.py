"""Scans without masks: locate their kidneys with a trained model (``locate``), and turn a located
folder into extra proxy-task cases for pretraining (``located``)."""

from kidneyssl.unlabeled.locate import (
    LOCATE_JSON,
    LocateSummary,
    kidney_confidence,
    locate_path,
    locate_scans,
)
from kidneyssl.unlabeled.located import (
    UNLABELED_PREFIX,
    LocatedSet,
    open_located,
    prepare_located,
    read_locate_json,
)

__all__ = ["LOCATE_JSON", "LocateSummary", "kidney_confidence", "locate_scans", "locate_path",
           "UNLABELED_PREFIX", "LocatedSet", "open_located", "prepare_located", "read_locate_json"]
