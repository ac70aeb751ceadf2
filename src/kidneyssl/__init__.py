"""kidneyssl: self-supervised (left/right kidney siamese) pretraining and 3-D kidney segmentation in CT.

Reference implementation of Dhere & Sivaswamy, "Self-supervised learning for segmentation".
Heavy modules (torch, SimpleITK, matplotlib) are imported by the submodules that need them.
"""

import os as _os

# Back PyTorch's large CPU tensors with transparent huge pages (read by torch at its first
# allocation, so set before any submodule imports torch; a user's own value wins). Every fresh
# 256 MB activation otherwise costs ~65 000 page faults: a channels-last copy of 64 x 64x128x128
# floats takes 168 ms with 4 KB pages and 43 ms with huge pages, and the paper network's CPU
# forward pass at 64x128x128 took 3.5 s instead of 4.3-4.6 s (same process setup, with and without
# the variable, 2 threads). No effect where the kernel has transparent huge pages off or outside
# Linux.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
