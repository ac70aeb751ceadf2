"""Facts about the machine this process runs on, and process-wide settings, that stages share."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

__all__ = [
    "available_cpus",
    "default_huge_pages",
    "fix_mmap_threshold",
    "free_pages_go_to_hypervisor",
    "settle_whole_scan_inference",
]

_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
_VIRTIO_BALLOON = 0x0005  # virtio device id of a memory balloon
_BALLOON_F_REPORTING = 5  # its feature bit: free page reporting
_THP = "THP_MEM_ALLOC_ENABLE"  # PyTorch reads it at its first tensor allocation, not at import
_user_chose_huge_pages: bool | None = None  # set by default_huge_pages (import kidneyssl)


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


def default_huge_pages() -> None:
    """Back PyTorch's large CPU tensors with transparent huge pages unless the user set
    ``THP_MEM_ALLOC_ENABLE`` (``import kidneyssl`` calls this, before any tensor exists).

    A fresh activation costs a page fault per 4 KB without them; with activations of a few MB (the
    demo's crops, training) huge pages paid even on a VM that hands its free pages to the
    hypervisor (``benchmarks/results/thp.json``). Whole-scan inference, whose activations are
    hundreds of MB, decides again (:func:`settle_whole_scan_inference`)."""
    global _user_chose_huge_pages
    if _user_chose_huge_pages is None:
        _user_chose_huge_pages = _THP in os.environ
    os.environ.setdefault(_THP, "1")


def settle_whole_scan_inference(sysfs: str | os.PathLike[str] = "/sys") -> dict[str, bool]:
    """Process settings for inference on whole scans (``predict``, ``locate``); call before the
    process's first tensor. Returns what was set.

    - glibc's mmap threshold fixed (:func:`fix_mmap_threshold`): a lower peak.
    - Huge pages off where free pages go to the hypervisor (:func:`free_pages_go_to_hypervisor`),
      unless the user set ``THP_MEM_ALLOC_ENABLE``: that guest gives every freed huge page back
      at once, so each activation of hundreds of MB is faulted in by the host as well, which
      costs more than huge pages save (``benchmarks/results/thp.json``)."""
    if not _user_chose_huge_pages and free_pages_go_to_hypervisor(sysfs):
        os.environ[_THP] = "0"
    return {"mmap_threshold_fixed": fix_mmap_threshold(), "huge_pages": os.environ.get(_THP) == "1"}
