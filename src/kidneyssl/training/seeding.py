"""Seeding, RNG-state capture and determinism switches for reproducible (and resumable) training.

Data order never depends on RNG carry-over: each epoch's order is derived from ``(seed, epoch)``
(see :func:`epoch_generator` and ``DistributedSampler.set_epoch``), so a resumed run sees exactly
the batches an uninterrupted one would. The global RNG states are still saved in every "last"
checkpoint and restored on resume, for anything else that draws random numbers.

Resuming, on any device layout (issue 19, item 1):

1. load the checkpoint to the CPU (``load_checkpoint(path)``, ``map_location="cpu"``);
2. build the model, move it to the device, ``model.load_state_dict(ckpt["model_state"])``
   (copies the CPU weights into the device's parameters);
3. build the optimizer over those parameters, then ``optimizer.load_state_dict(...)``: PyTorch's
   ``Optimizer.load_state_dict`` casts every floating state tensor (Adam's ``exp_avg``,
   ``exp_avg_sq``) to its parameter's device and dtype and keeps ``step`` on the CPU (tested), so no
   ``optimizer_to(device)`` helper is needed; a ``GradScaler`` state holds numbers only;
4. ``restore_rng_state(ckpt["rng"], device)``.

:func:`restore_rng_state` accepts tensors on any device (a checkpoint loaded with
``map_location="cuda"`` by older code) and restores only CUDA states that fit the devices present.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np

__all__ = ["seed_everything", "capture_rng_state", "restore_rng_state", "epoch_generator",
           "configure_determinism"]

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (CPU and CUDA) global generators with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _cuda_index(device: Any) -> int | None:
    """The CUDA device index whose RNG state belongs to this process: ``device``'s when it is a
    CUDA device, the current device when ``device`` is None and CUDA is in use, else None."""
    import torch

    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return int(torch.cuda.current_device())
        return None
    dev = torch.device(device)
    if dev.type != "cuda":
        return None
    return int(dev.index) if dev.index is not None else int(torch.cuda.current_device())


def capture_rng_state(device: Any = None) -> dict[str, Any]:
    """The global RNG states this process draws from: python, numpy, torch CPU, and the CUDA
    generator of the device it computes on.

    Args:
        device: the process's compute device. A CUDA device adds its generator's state
            (``"cuda_device"``); ``cpu`` adds none; None takes the current CUDA device when CUDA
            is initialised. One device per process: the other GPUs' generators are not this
            process's (checkpoints written before saved all of them, as ``"cuda"``).

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
    index = _cuda_index(device)
    if index is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(index)
    return state


def _on_cpu(value: Any, dtype: Any = None) -> Any:
    """``value`` as a CPU tensor (of ``dtype``), wherever it was loaded to (GPU, CPU, a list)."""
    import torch

    tensor = value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    return tensor.to(device="cpu", dtype=dtype or tensor.dtype)


def _python_state(saved: Any) -> tuple:
    if isinstance(saved, dict):  # tensors / plain containers (this version)
        internal = tuple(int(v) for v in _on_cpu(saved["state"]).tolist())
        return (int(saved["version"]), internal, saved["gauss_next"])
    version, internal, gauss_next = saved  # a tuple (checkpoints written before)
    return (version, tuple(int(v) for v in internal), gauss_next)


def _numpy_state(saved: Any) -> Any:
    if isinstance(saved, dict):
        raw = saved["key"]
        key = _on_cpu(raw).numpy() if not isinstance(raw, np.ndarray) else raw
        return {"bit_generator": saved["bit_generator"],
                "state": {"key": np.asarray(key).astype(np.uint32), "pos": int(saved["pos"])},
                "has_gauss": int(saved["has_gauss"]), "gauss": float(saved["gauss"])}
    return saved  # numpy's legacy tuple


def _restore_cuda(state: dict[str, Any], device: Any) -> None:
    """Set the CUDA generators that ``state`` holds and this machine has (see
    :func:`restore_rng_state`)."""
    import torch

    if "cuda_device" not in state and not state.get("cuda"):
        return
    if not torch.cuda.is_available():
        log.info("the checkpoint's CUDA RNG state is not restored: no CUDA device here")
        return
    if "cuda_device" in state:
        index = _cuda_index(device if device is not None else torch.device("cuda"))
        if index is not None:
            torch.cuda.set_rng_state(_on_cpu(state["cuda_device"], torch.uint8), index)
        return
    saved = list(state["cuda"])  # one per GPU the saving process saw, in device order
    present = torch.cuda.device_count()
    for index, value in enumerate(saved[:present]):
        torch.cuda.set_rng_state(_on_cpu(value, torch.uint8), index)
    if len(saved) > present:
        log.info("restored the CUDA RNG states of %d GPU(s); the checkpoint holds %d (saved with more GPUs)",
                 present, len(saved))


def restore_rng_state(state: dict[str, Any], device: Any = None) -> None:
    """Restore states captured by :func:`capture_rng_state` (missing entries are left alone).

    Tensors may be on any device (a checkpoint loaded with ``map_location="cuda"``): they are
    copied to the CPU as the setters need. CUDA states are restored only where they fit: this
    process's generator (``device``, else the current CUDA device) from ``"cuda_device"``; from
    older checkpoints' per-GPU list, the GPUs that exist here (one line is logged when the
    checkpoint saw more); nothing without CUDA.

    Args:
        state: the captured dict.
        device: the device this process computes on now.
    """
    import torch

    if "python" in state:
        random.setstate(_python_state(state["python"]))
    if "numpy" in state:
        np.random.set_state(_numpy_state(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(_on_cpu(state["torch"], torch.uint8))
    _restore_cuda(state, device)


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
