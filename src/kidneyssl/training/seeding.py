"""Seeding, RNG-state capture and determinism switches for reproducible (and resumable) training.

Data order never depends on RNG carry-over: each epoch's order is derived from ``(seed, epoch)``
(see :func:`epoch_generator` and ``DistributedSampler.set_epoch``), so a resumed run sees exactly
the batches an uninterrupted one would. The global RNG states are still saved in every "last"
checkpoint and restored on resume, for anything else that draws random numbers.
"""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np

__all__ = ["seed_everything", "capture_rng_state", "restore_rng_state", "epoch_generator",
           "configure_determinism"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """The global RNG states (python, numpy, torch CPU, and CUDA when available), picklable."""
    import torch

    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (missing entries are left alone)."""
    import torch

    if "python" in state:
        random.setstate(state["python"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "torch" in state:
        torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def epoch_generator(seed: int, epoch: int, salt: int = 0) -> np.random.Generator:
    """A NumPy generator that depends only on ``(seed, epoch, salt)``: per-epoch sampling
    (e.g. which pairs to draw) is then independent of how many epochs ran in this process."""
    return np.random.default_rng([int(seed), int(epoch), int(salt)])


def configure_determinism(deterministic: bool, threads: int | None = None) -> None:
    """Make torch deterministic (``use_deterministic_algorithms``) and/or pin the thread count.

    Deterministic mode is for tests and exact-resume checks; it can be slower on GPU.
    """
    import torch

    if threads is not None and threads > 0:
        torch.set_num_threads(threads)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        if hasattr(torch.backends, "cudnn"):
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
