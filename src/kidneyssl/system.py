"""Facts about the machine this process runs on, and process-wide settings, that stages share."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = ["available_cpus", "fix_mmap_threshold", "free_pages_go_to_hypervisor", "huge_pages_pay"]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_VIRTIO_BALLOON = 0x0005  # virtio device id of a memory balloon
_BALLOON_F_REPORTING = 5  # its feature bit: free page reporting


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


def free_pages_go_to_hypervisor(sysfs: str | os.PathLike[str] = "/sys") -> bool:
    """Whether this Linux guest hands its free memory back to the hypervisor as it is freed: a
    virtio memory balloon that negotiated free page reporting (``features``, one character per
    feature bit, as the kernel lists them under ``bus/virtio/devices``). Elsewhere (bare metal,
    another OS, no balloon, an unreadable ``sysfs``) ``False``."""
    try:
        devices = sorted(Path(sysfs, "bus", "virtio", "devices").iterdir())
    except OSError:
        return False
    for device in devices:
        try:
            kind = int((device / "device").read_text().strip(), 16)
            features = (device / "features").read_text().strip()
        except (OSError, ValueError):
            continue
        if kind == _VIRTIO_BALLOON and features[_BALLOON_F_REPORTING:_BALLOON_F_REPORTING + 1] == "1":
            return True
    return False


def huge_pages_pay(sysfs: str | os.PathLike[str] = "/sys") -> bool:
    """Whether PyTorch should back its large CPU tensors with transparent huge pages
    (``THP_MEM_ALLOC_ENABLE``), which ``import kidneyssl`` decides before torch loads.

    A fresh 3-D activation of hundreds of MB costs tens of thousands of 4 KB page faults, and on a
    machine that keeps its freed memory huge pages cut them (faster forward passes and training
    steps there). A guest that reports its free pages to the hypervisor gives every freed huge
    page back at once, so each new one is faulted in again by the host as well: there, huge pages
    made the forward pass and the training step slower, not faster. Both measurements:
    ``benchmarks/results/thp.json``."""
    return not free_pages_go_to_hypervisor(sysfs)
