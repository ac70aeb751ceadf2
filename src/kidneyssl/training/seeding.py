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
    """The global RNG states (python, numpy, torch CPU, and CUDA when available).

    Stored as tensors and plain containers only, so that a checkpoint holding them loads with
    ``torch.load(weights_only=True)``; :func:`restore_rng_state` turns them back exactly.
    """
    import torch

    version, internal, gauss_next = random.getstate()
    legacy = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": {"version": int(version),
                   "state": torch.tensor([int(v) for v in internal], dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "numpy": {"bit_generator": str(legacy["bit_generator"]),
                  "key": torch.from_numpy(np.asarray(legacy["state"]["key"], dtype=np.int64)),
                  "pos": int(legacy["state"]["pos"]),
                  "has_gauss": int(legacy["has_gauss"]),
                  "gauss": float(legacy["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def _python_state(saved: Any) -> tuple:
    if isinstance(saved, dict):  # tensors / plain containers (this version)
        internal = tuple(int(v) for v in saved["state"].tolist())
        return (int(saved["version"]), internal, saved["gauss_next"])
    version, internal, gauss_next = saved  # a tuple (checkpoints written before)
    return (version, tuple(int(v) for v in internal), gauss_next)


def _numpy_state(saved: Any) -> Any:
    if isinstance(saved, dict):
        key = np.asarray(saved["key"].numpy() if hasattr(saved["key"], "numpy") else saved["key"])
        return {"bit_generator": saved["bit_generator"],
                "state": {"key": key.astype(np.uint32), "pos": int(saved["pos"])},
                "has_gauss": int(saved["has_gauss"]), "gauss": float(saved["gauss"])}
    return saved  # numpy's legacy tuple


def restore_rng_state(state: dict[str, Any]) -> None:
    """Restore states captured by :func:`capture_rng_state` (missing entries are left alone)."""
    import torch

    if "python" in state:
        random.setstate(_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state(state["numpy"]))
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
