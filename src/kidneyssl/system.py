"""Facts about the machine this process runs on, and process-wide settings, that stages share."""

from __future__ import annotations

import ctypes
import os

__all__ = ["available_cpus", "fix_mmap_threshold"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def available_cpus() -> int:
    """CPUs this process may run on: its affinity mask (``taskset``, a batch scheduler's
    allocation), else ``os.cpu_count()``; at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def fix_mmap_threshold(nbytes: int = 128 * 1024) -> bool:
    """Serve every C-heap allocation of ``nbytes`` or more by its own memory map, returned to the
    system when freed (glibc; elsewhere nothing is done and ``False`` returned).

    glibc starts at this threshold (128 KiB) but raises it, up to 32 MiB, whenever a mapped block
    is freed, so after the first large buffers come and go, freed buffers below the new threshold
    stay in the heap, fragmented, and a later pass's allocations add to them. Inference frees and
    allocates such buffers all the time (PyTorch's activations, OpenVINO's compiled models), and
    ``predict``'s peak is its memory limit; fixing the threshold lowers that peak for a few page
    faults more (``benchmarks/results/predict_memory.json``). Setting it disables glibc's raising."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the process runs on (musl's is a no-op)
    except (OSError, AttributeError, TypeError):  # no mallopt (macOS), no CDLL(None) (Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, int(nbytes)))
