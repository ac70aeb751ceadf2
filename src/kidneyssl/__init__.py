"""kidneyssl: self-supervised (left/right kidney siamese) pretraining and 3-D kidney segmentation in CT.

Reference implementation of Dhere & Sivaswamy, "Self-supervised learning for segmentation".
Heavy modules (torch, SimpleITK, matplotlib) are imported by the submodules that need them.
"""

import importlib.metadata as _metadata
import re as _re

#: The oldest torch this package runs on: checkpoints are read with
#: ``torch.serialization.safe_globals``, which torch 2.5 introduced (``pyproject.toml`` says the same).
TORCH_MIN_VERSION = (2, 5)


def _check_torch_version() -> None:
    """Raise ImportError when the installed torch is older than :data:`TORCH_MIN_VERSION`.

    Reads the installed distribution's version without importing torch (which takes seconds and
    would fail in less clear ways); a torch that pip does not know of (a source tree on the path)
    is left to its first import.
    """
    try:
        installed = _metadata.version("torch")
    except _metadata.PackageNotFoundError:
        return
    match = _re.match(r"(\d+)\.(\d+)", installed)
    if match and (int(match.group(1)), int(match.group(2))) < TORCH_MIN_VERSION:
        needed = ".".join(map(str, TORCH_MIN_VERSION))
        raise ImportError(f"kidneyssl needs torch >= {needed}, but torch {installed} is installed; "
                          f"install torch {needed} or newer (the CPU or CUDA build you want)")


_check_torch_version()

# Huge pages for PyTorch's large CPU tensors, decided before any tensor exists (torch reads the
# variable at its first allocation); a user's own value wins. No effect where the kernel has them
# off or outside Linux.
from kidneyssl.system import default_huge_pages as _default_huge_pages

_default_huge_pages()

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
    "TORCH_MIN_VERSION",
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
