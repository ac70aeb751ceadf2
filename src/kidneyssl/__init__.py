"""kidneyssl: self-supervised (left/right kidney siamese) pretraining and 3-D kidney segmentation in CT.

Reference implementation of Dhere & Sivaswamy, "Self-supervised learning for segmentation".
Heavy modules (torch, SimpleITK, matplotlib) are imported by the submodules that need them.
"""

from kidneyssl.config import (
    ExperimentConfig,
    InferenceConfig,
    ModelConfig,
    PreprocessConfig,
    PretrainConfig,
    SegTrainConfig,
    load_preset,
)
from kidneyssl.errors import CheckpointError, DataError, KidneySSLError, RunFolderError
from kidneyssl.io.geometry import CANONICAL_AXCODES, Geometry, Side, Volume

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "CANONICAL_AXCODES",
    "CheckpointError",
    "DataError",
    "ExperimentConfig",
    "Geometry",
    "InferenceConfig",
    "KidneySSLError",
    "ModelConfig",
    "PreprocessConfig",
    "PretrainConfig",
    "RunFolderError",
    "SegTrainConfig",
    "Side",
    "Volume",
    "load_preset",
]
